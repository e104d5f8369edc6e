"""What a scoring process runs: one chunk of a catalogue checked, scored and written; and the pool of them.

Kept apart from ``flows/batch_scoring.py`` so that a worker process imports only this (numpy, pyarrow, the
core, scikit-learn), not MLflow. The pool can be started before anything else (``reggaeton score`` does,
before it even imports MLflow): its processes start and import the model families while the parent
loads the version, and read the scorer from a file once it is there.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from types import TracebackType

from adapters import catalogue as files
from adapters.catalogue import Chunk
from reggaeton.batch import Counts, answer_chunk
from reggaeton.scorer import Scorer

# Imported by each worker as it starts: the model families' modules, so unpickling the scorer is quick.
WARM_MODULES = ("reggaeton.model", "pyarrow.parquet", "pyarrow.csv")


@dataclass(frozen=True)
class ChunkContext:
    """What scoring a chunk needs besides its rows and the scorer (sent to the worker processes)."""

    partial: Path
    output_format: str
    ids: tuple[str, ...]
    file_names: tuple[str, ...] | None  # per input file, when the input is a folder
    model: tuple[str, str, float]  # name, version, threshold
    scorer_file: Path | None = None  # the pickled scorer, for worker processes


def score_chunk(chunk: Chunk, context: ChunkContext, scorer: Scorer) -> Counts:
    """Check, score and write one chunk (its part file, and its rejects part)."""
    values, not_numbers = files.feature_values(chunk.batch)
    answer = answer_chunk(values, not_numbers, scorer.probabilities, context.model[2])
    file_name = context.file_names[chunk.key.file] if context.file_names is not None else None
    scores = files.scores_table(chunk, answer, context.ids, file_name, context.model)
    rejects = files.rejects_table(chunk, answer, context.ids, file_name)
    files.write_chunk(context.partial, chunk.key, context.output_format, scores, rejects)
    return Counts(answer.read, answer.scored, answer.rejected)


class ChunkPool:
    """Scoring processes, forked from a fork server that imported the model families once.

    Never a fork of this process (MLflow and Prefect run threads in it); and each worker a fork of one
    server rather than a fresh interpreter of its own: the libraries are imported once, not once per
    worker (measured under load: two workers ready in 7 s instead of 17-20 s spawned).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(
            [__name__, *WARM_MODULES]
        )  # before the server starts (once per process)
        self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start)
        for _ in range(workers):  # start every process now (the pool would start them one per task)
            self._executor.submit(_warm)

    def submit(self, chunk: Chunk, context: ChunkContext) -> Future[Counts]:
        """Score a chunk in one of the processes."""
        return self._executor.submit(score_in_worker, chunk, context)

    def close(self) -> None:
        """Wait for the chunks being scored, drop the queued ones, end the processes."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChunkPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


# The scorer of this worker process, read once from its file (a chunk then carries only its rows).
_SCORERS: dict[Path, Scorer] = {}


def _start() -> None:
    """A worker's start: it ends when its parent ends (a parent killed outright would leave it waiting)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    wait([sentinel])
    os._exit(1)


def _warm() -> None:
    for module in WARM_MODULES:
        importlib.import_module(module)


def score_in_worker(chunk: Chunk, context: ChunkContext) -> Counts:
    """:func:`score_chunk` with the scorer of ``context.scorer_file`` (read on this process's first chunk)."""
    assert context.scorer_file is not None
    scorer = _SCORERS.get(context.scorer_file)
    if scorer is None:
        from threadpoolctl import threadpool_limits

        scorer = _SCORERS[context.scorer_file] = pickle.loads(context.scorer_file.read_bytes())
        threadpool_limits(1)  # one core per process: OpenMP code (histogram boosting) would oversubscribe
    return score_chunk(chunk, context, scorer)
