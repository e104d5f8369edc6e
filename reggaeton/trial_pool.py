"""Worker processes that score a study's trials, so parallel trials use every core.

A trial's fits on data this small are mostly Python (tree growing, SMOTE, the pipeline's glue): trials
run in threads share one interpreter lock, and two threads on two cores ran a study *slower* than one
(68 s vs 47.5 s for 50 trials on the original data). So the study stays in the calling process (Optuna's
threads ask for parameters, report each fold to the pruner, tell the result, run the callbacks that
record the trial) and only the cross-validation runs in a pool of worker processes, one per parallel
trial. Each worker prepares the folds once (``reggaeton.folds``) and scores trials sent to it,
sending back each fold's score and waiting for the go-on, so the pruner decides exactly as in one
process. The storage can be anything (in-memory too): the workers never touch it.

Workers are new interpreters (``python -m reggaeton.trial_pool``) on one end of a socket pair, never
forks: the caller has threads (Prefect, MLflow, Optuna) whose locks a fork would copy held. Nor are
they ``multiprocessing`` spawns, which re-import the caller's main module in every worker (a Prefect
flow run's engine, MLflow: ~3 s per worker before its first trial). A worker imports only what scoring
needs. A worker that dies fails the trial it was scoring with a clear error; a worker whose parent died
sees its socket close and exits. POSIX only (the socket is handed over as an inherited descriptor).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from reggaeton.folds import Folds

logger = logging.getLogger(__name__)

# Messages from a worker: ("fold", index, scores so far), ("done", result), ("stopped",), ("error", text).
FOLD, DONE, STOPPED, ERROR = "fold", "done", "stopped", "error"
JOIN_S = 10.0  # how long close() waits for a worker to exit before killing it

FoldReport = Callable[[int, tuple[float, ...]], None]


class Evaluate(Protocol):
    """A module-level function scoring one pipeline on prepared folds (``tuning.cross_validate``)."""

    def __call__(
        self, family: str, params: Mapping[str, Any], folds: Folds, seed: int, on_fold: FoldReport | None
    ) -> Any: ...


class WorkerDied(RuntimeError):
    """A trial's worker process ended (killed, out of memory) before sending the trial's result."""


class _Stop(Exception):
    """The parent said to stop this trial (pruned)."""


def _serve(conn: Connection) -> None:
    """A worker's loop: take the data, then score each ``(family, params)`` until ``None`` or EOF."""
    try:
        evaluate, X, y, options = conn.recv()
    except EOFError:
        return
    folds = Folds(X, y, folds=options["folds"], repeats=options["repeats"], seed=options["seed"])

    def on_fold(index: int, scores: tuple[float, ...]) -> None:
        conn.send((FOLD, index, scores))
        if not conn.recv():
            raise _Stop

    # Native threads: one per trial (trials x threads <= cores), for the worker's whole life.
    with threadpool_limits(limits=options["threads"]):
        while True:
            try:
                task = conn.recv()
            except EOFError:  # the parent is gone
                return
            if task is None:
                return
            family, params = task
            try:
                conn.send((DONE, evaluate(family, params, folds, options["seed"], on_fold)))
            except _Stop:
                conn.send((STOPPED,))
            except Exception:  # sent to the trial's thread in the parent, which raises it
                conn.send((ERROR, traceback.format_exc()))


def _key(X: np.ndarray, y: np.ndarray, folds: int, repeats: int, seed: int) -> tuple[Any, ...]:
    digest = hashlib.sha256(np.ascontiguousarray(X).tobytes() + np.ascontiguousarray(y).tobytes())
    return (np.shape(X), digest.hexdigest(), folds, repeats, seed)


class TrialPool:
    """``processes`` worker processes scoring trials on the same folds; thread-safe, one trial per worker.

    Use as a context manager: leaving it stops the workers (bounded wait, then kill).
    """

    def __init__(
        self, evaluate: Evaluate, X: np.ndarray, y: np.ndarray, *, processes: int, folds: int,
        repeats: int, seed: int, threads: int = 1,
    ) -> None:  # fmt: skip
        options = {"folds": folds, "repeats": repeats, "seed": seed, "threads": threads}
        self._key = _key(X, y, folds, repeats, seed)
        self.processes = processes
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._workers: list[tuple[subprocess.Popen[bytes], Connection]] = []
        # The workers import this package from where this process found it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        for _ in range(processes):
            parent_end, child_end = multiprocessing.Pipe()
            process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(child_end.fileno())],
                pass_fds=[child_end.fileno()], env=env, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            child_end.close()
            self._workers.append((process, parent_end))
        for process, conn in self._workers:
            try:
                conn.send((evaluate, np.asarray(X), np.asarray(y), options))
            except (BrokenPipeError, ConnectionResetError) as error:
                self.close()
                raise WorkerDied(f"trial worker {process.pid} ended while starting: {error!r}") from error
            self._idle.put(conn)

    def __enter__(self) -> TrialPool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def serves(self, X: np.ndarray, y: np.ndarray, *, folds: int, repeats: int, seed: int) -> bool:
        """Whether the workers score on these rows and these folds (so a study may reuse the pool)."""
        return self._key == _key(X, y, folds, repeats, seed)

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [process.pid for process, _ in self._workers]

    def evaluate(self, family: str, params: Mapping[str, Any], on_fold: FoldReport | None) -> Any:
        """Score one pipeline on an idle worker; ``on_fold`` runs here after each fold and may raise.

        Raises:
            WorkerDied: the worker ended before sending the result.
            RuntimeError: the evaluation raised in the worker (its traceback in the message).
        """
        conn = self._idle.get()
        try:
            return self._exchange(conn, family, params, on_fold)
        finally:
            self._idle.put(conn)

    def _exchange(
        self, conn: Connection, family: str, params: Mapping[str, Any], on_fold: FoldReport | None
    ) -> Any:
        try:
            conn.send((family, dict(params)))
            while True:
                message = conn.recv()
                if message[0] == DONE:
                    return message[1]
                if message[0] == ERROR:
                    raise RuntimeError(f"scoring {family} {dict(params)} failed in a worker:\n{message[1]}")
                try:
                    if on_fold is not None:
                        on_fold(message[1], message[2])
                except BaseException:
                    conn.send(False)
                    conn.recv()  # STOPPED: the worker is idle again
                    raise
                conn.send(True)
        except (EOFError, BrokenPipeError, ConnectionResetError) as error:
            raise WorkerDied(f"a trial worker process ended while scoring {family}: {error!r}") from error

    def close(self) -> None:
        """Stop the workers: each finishes its trial, gets ``None`` and exits; stragglers are killed."""
        for _, conn in self._workers:
            with contextlib.suppress(OSError):  # a dead worker's socket
                conn.send(None)
        for process, conn in self._workers:
            try:
                process.wait(JOIN_S)
            except subprocess.TimeoutExpired:
                logger.warning("trial worker %d did not exit in %.0f s: killed", process.pid, JOIN_S)
                process.kill()
                process.wait(JOIN_S)
            conn.close()
        self._workers.clear()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
