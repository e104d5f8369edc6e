"""What a scoring process runs: one chunk of a catalogue checked, scored and written.

Kept apart from ``flows/batch_scoring.py`` so that a worker process imports only this (numpy, pyarrow, the
core, and scikit-learn when it unpickles the pipeline), not MLflow: each worker starts faster and smaller.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from adapters import catalogue as files
from adapters.catalogue import Chunk
from reggaeton.batch import Counts, answer_chunk
from reggaeton.scorer import Scorer


@dataclass(frozen=True)
class ChunkContext:
    """What scoring a chunk needs besides its rows and the scorer (sent to the worker processes)."""

    partial: Path
    output_format: str
    ids: tuple[str, ...]
    file_names: tuple[str, ...] | None  # per input file, when the input is a folder
    model: tuple[str, str, float]  # name, version, threshold


def score_chunk(chunk: Chunk, context: ChunkContext, scorer: Scorer) -> Counts:
    """Check, score and write one chunk (its part file, and its rejects part)."""
    values, not_numbers = files.feature_values(chunk.batch)
    answer = answer_chunk(values, not_numbers, scorer.probabilities, context.model[2])
    file_name = context.file_names[chunk.key.file] if context.file_names is not None else None
    scores = files.scores_table(chunk, answer, context.ids, file_name, context.model)
    rejects = files.rejects_table(chunk, answer, context.ids, file_name)
    files.write_chunk(context.partial, chunk.key, context.output_format, scores, rejects)
    return Counts(answer.read, answer.scored, answer.rejected)


# The scorer of this worker process, unpickled once when it starts (a chunk then carries only its rows).
_SCORER: list[Scorer] = []


def start(scorer: bytes) -> None:
    """Initialise a worker process: its scorer, one core, and its end when the parent process ends."""
    from threadpoolctl import threadpool_limits

    _SCORER.append(pickle.loads(scorer))
    threadpool_limits(1)  # one core per process: OpenMP code (histogram boosting) would oversubscribe
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A parent killed outright (SIGKILL, OOM) leaves its pool's workers waiting for work forever.
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    wait([sentinel])
    os._exit(1)


def score_in_worker(chunk: Chunk, context: ChunkContext) -> Counts:
    """:func:`score_chunk` with the scorer this process started with."""
    return score_chunk(chunk, context, _SCORER[0])
