"""`python -m infra.worker`: the worker container's process; a stop never strands a run it was submitting.

It runs ``prefect worker start`` as its child, named after the container, and on SIGTERM (``docker-compose
stop``, Pulumi's replace or destroy) or SIGINT:

1. passes SIGTERM to the worker alone: Prefect's worker stops taking runs, stops the flow runs it
   started (a ``Running`` run cut off is crashed, by its engine or the zombie rule, and a crashed retrain
   is rerun with its request id) and exits;
2. waits up to ``--grace-s`` (less than the container's stop grace period) for the worker and its process
   group, then kills what is left;
3. hands the runs this worker left Pending back to the schedule (``adapters.prefect_api``), as
   ``make down`` does for the embedded stack: a stop never holds a deployment's concurrency slot.

A worker killed with SIGKILL cannot do step 3: the stranded-run rule (automation, then the watchdog)
crashes its Pending run instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from adapters.prefect_api import hand_back_pending_runs, prefect_api
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)


def worker_command(pool: str, name: str) -> list[str]:
    """The Prefect worker this process runs."""
    return [
        *(sys.executable, "-m", "prefect", "worker", "start"),
        *("--pool", pool, "--type", "process", "--name", name, "--with-healthcheck"),
    ]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_worker(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the worker, up to ``grace_s`` for it and its flow runs, then SIGKILL to what is left."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (child.poll() is None or _group_alive(child.pid)):
        time.sleep(0.2)
    if _group_alive(child.pid):
        logger.warning("worker: still running after %.0f s, killed", grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def hand_back(settings: Settings, pool: str, name: str) -> list[str]:
    """Give the runs this worker left Pending back to the schedule; a failure is logged, not raised."""
    try:
        with prefect_api(settings):
            handed = hand_back_pending_runs(pool, worker=name)
    except Exception as exc:  # the server is gone too: the stranded-run rule covers what is left
        logger.warning("worker: could not hand back its pending runs: %s", exc)
        return []
    for run in handed:
        logger.info("worker: handed back run %s (it was being submitted)", run)
    return handed


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: run the worker until it exits or a stop signal arrives."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the work pool")
    parser.add_argument("--grace-s", type=float, default=20.0, help="time the worker gets after SIGTERM")
    parser.add_argument("--name", default=socket.gethostname(), help="worker name (default: host name)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Its own process group: the worker and its flow runs, killed together when the grace is over.
    child = subprocess.Popen(worker_command(args.pool, args.name), start_new_session=True)
    while child.poll() is None and not stopping:
        time.sleep(0.2)
    if stopping:
        logger.info("worker: signal %d, stopping (up to %.0f s)", stopping[0], args.grace_s)
    stop_worker(child, args.grace_s)
    hand_back(settings, args.pool, args.name)
    return 0 if stopping else (child.returncode or 0)


if __name__ == "__main__":
    raise SystemExit(main())
