"""`python -m infra.worker`: the worker container's process; a stop never strands a run it was submitting.

It runs ``prefect worker start`` as its child, named after the container, and with ``--tuning-pool`` a
second one on the tuning pool with ``--limit 1`` (named ``<host>-tuning``: one tuning run per machine at a
time, so a retrain's tuning runs spread over the machines), each in its own process group. When one
exits the other is stopped too (the container restarts). On SIGTERM (``docker-compose stop``, Pulumi's
replace or destroy) or SIGINT:

1. passes SIGTERM to the workers alone: Prefect's worker stops taking runs, stops the flow runs it
   started (a ``Running`` run cut off is crashed, by its engine or the zombie rule, and a crashed retrain
   is rerun with its request id) and exits;
2. waits up to ``--grace-s`` (less than the container's stop grace period) for the workers and their
   process groups, then kills what is left;
3. hands the runs these workers left Pending back to the schedule (``adapters.prefect_api``), as
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
from collections.abc import Sequence
from types import FrameType

from adapters import processes
from adapters.prefect_api import hand_back_pending_runs, prefect_api
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)


def worker_command(pool: str, name: str, *, healthcheck: bool = True, limit: int | None = None) -> list[str]:
    """A Prefect process worker on ``pool``; ``limit``: at most that many of its runs at a time."""
    return [
        *(sys.executable, "-m", "prefect", "worker", "start"),
        *("--pool", pool, "--type", "process", "--name", name),
        *(("--with-healthcheck",) if healthcheck else ()),
        *(("--limit", str(limit)) if limit is not None else ()),
    ]


def tuning_worker_name(name: str) -> str:
    """The tuning worker's name beside the worker called ``name`` (one container, two workers)."""
    return f"{name}-tuning"


def _ours_alive(child: subprocess.Popen[bytes]) -> bool:
    """The worker, or flow runs it left in its group (numbered by its PID), are still running."""
    return child.poll() is None or processes.orphans_alive(child.pid)


def stop_workers(children: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM to each worker, up to ``grace_s`` for them and their flow runs, then SIGKILL to the rest."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    def running() -> bool:
        return any(_ours_alive(child) for child in children)

    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and running():
        time.sleep(0.2)
    for child in children:
        if _ours_alive(child):
            logger.warning("worker %d: still running after %.0f s, killed", child.pid, grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def run_workers(commands: Sequence[list[str]], grace_s: float, stopping: Sequence[int]) -> int:
    """Run each command in its own process group until one exits or ``stopping`` fills; stop them all.

    Returns:
        0 after a stop signal, else the return code of the worker that exited first (the container
        restarts: a machine never serves one pool without the other).
    """
    # Own process groups: each worker and its flow runs, killed together when the grace is over.
    children = [subprocess.Popen(command, start_new_session=True) for command in commands]
    while all(child.poll() is None for child in children) and not stopping:
        time.sleep(0.2)
    ended = next((child.returncode for child in children if child.returncode is not None), 0)
    if stopping:
        logger.info("worker: signal %d, stopping (up to %.0f s)", stopping[0], grace_s)
    else:
        logger.warning("worker: a child exited (%s), stopping the other", ended)
    stop_workers(children, grace_s)
    return 0 if stopping else (ended or 0)


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
    """Command line entry point: run the workers until one exits or a stop signal arrives."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the work pool")
    parser.add_argument("--tuning-pool", help="also serve this pool, one run at a time (tuning runs)")
    parser.add_argument("--grace-s", type=float, default=20.0, help="time the workers get after SIGTERM")
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
    workers = [(args.pool, args.name, worker_command(args.pool, args.name))]
    if args.tuning_pool:
        tuning_name = tuning_worker_name(args.name)
        command = worker_command(args.tuning_pool, tuning_name, healthcheck=False, limit=1)
        workers.append((args.tuning_pool, tuning_name, command))
    code = run_workers([command for *_, command in workers], args.grace_s, stopping)
    for pool, name, _ in workers:
        hand_back(settings, pool, name)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
