"""A version's place in the live evaluation, and what a signed decision record tells the API replicas.

Kept apart from ``reggaeton.live`` (its statistics import SciPy and scikit-learn) so an API replica reads
a challenger's record without importing them at start-up.
"""

from __future__ import annotations

from typing import Final

from reggaeton.decision_record import DecisionRecord

# A version's place in the loop (names.Tag.LIVE_STATE, and the outcome of its live records).
REGISTERED: Final = "registered"
SHADOW: Final = "shadow"
CANARY: Final = "canary"
CHAMPION: Final = "champion"
REJECTED: Final = "rejected"
UNDER_EVALUATION: Final = frozenset({SHADOW, CANARY})

# The keys of a canary record's policy: its share of the requests (what the replicas apply) and its step.
CANARY_SHARE: Final = "canary_share"
CANARY_STEP: Final = "canary_step"


def assigned_share(record: DecisionRecord) -> float | None:
    """What a verified decision record tells the API replicas to do with its version.

    ``shadow``: score it beside the champion (share 0); ``canary``: also let it answer the record's
    ``canary_share`` of the requests; any other outcome (rejected, promoted): nothing (None).
    """
    if record.outcome == SHADOW:
        return 0.0
    if record.outcome != CANARY:
        return None
    try:
        share = float(record.policy.get(CANARY_SHARE, 0.0))
    except (TypeError, ValueError):
        return None
    return min(max(share, 0.0), 1.0)
