"""What the API's own latency histogram says, for tests that must tell a request that waited on a
database from one that did not.

A client's timeout measures the client too: on this busy 2-core machine a starved test thread timed out
requests it had not even sent (CI runs, 1 s and then 3 s bounds). The server's histogram
(``reggaeton_http_request_duration_seconds``, from request start to the last response byte) measures
the request alone.
"""

from __future__ import annotations

from typing import Final

# A bucket of the histogram (serving/metrics.py): far below any wait on a database these tests provoke
# (SQLite's 5 s busy timeout, libpq's 10 s tcp_user_timeout), far above an answer from memory.
ANSWER_BOUND_S: Final = 2.5
HISTOGRAM: Final = "reggaeton_http_request_duration_seconds_bucket"


def answered_within(metrics: str, le: str, route: str = "/predict") -> float:
    """The server's count of ``route`` requests answered within ``le`` seconds (a bucket, or "+Inf")."""
    for line in metrics.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(HISTOGRAM + "{") and f'route="{route}"' in name and f'le="{le}"' in name:
            return float(value)
    raise AssertionError(f"no {route} latency bucket le={le} in the metrics")


def slower_than_the_bound(metrics: str, route: str = "/predict") -> float:
    """How many ``route`` requests the server took longer than ANSWER_BOUND_S to answer (since it started)."""
    return answered_within(metrics, "+Inf", route) - answered_within(metrics, str(ANSWER_BOUND_S), route)
