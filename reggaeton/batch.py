"""Batch scoring of a catalogue, the pure part: one chunk's checks and answers, chunk keys, progress, and
the identity a run is resumed by.

A catalogue is read in chunks of a fixed number of rows per file (``ChunkKey``), so the same input
always splits the same way: a chunk's output is a function of its rows, the model version and the
threshold, which is what lets a killed run continue from its finished chunks and end byte-identical to
an uninterrupted one. The I/O is in ``adapters/catalogue.py``, the run in ``flows/batch_scoring.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import numpy as np

from reggaeton.schema import FEATURE_NAMES, PROBABILITY, VALID, problem_text, row_problems

# Output columns (besides the input's id columns) and the rejects file's.
ROW: Final = "row"  # 1-based position of the row in its file (the header not counted)
FILE: Final = "file"  # the file a row came from, relative to the input folder (folder inputs only)
LABEL: Final = "label"
MODEL_NAME: Final = "model_name"
MODEL_VERSION: Final = "model_version"
THRESHOLD: Final = "threshold"
FIELD: Final = "field"  # a rejected row's first field outside the schema
REASON: Final = "reason"  # every problem of a rejected row, each naming its field
SCORE_COLUMNS: Final = (PROBABILITY, LABEL, MODEL_NAME, MODEL_VERSION, THRESHOLD)
REJECT_COLUMNS: Final = (FIELD, REASON)

# The output layout (folders, part names, columns): part of a run's identity, so that a partial run
# written by another layout is never continued.
LAYOUT: Final = 1
FORMATS: Final = ("parquet", "csv")


class ModelAnswerError(ValueError):
    """The model gave a probability that is not a finite number in [0, 1] (never written as an answer)."""


@dataclass(frozen=True, order=True)
class ChunkKey:
    """A chunk: the ``chunk``-th block of ``chunk_rows`` rows of the ``file``-th input file."""

    file: int
    chunk: int

    def part_name(self, suffix: str) -> str:
        """The file name of this chunk's part (names sort in input order)."""
        return f"part-{self.file:05d}-{self.chunk:06d}{suffix}"


@dataclass(frozen=True)
class ChunkAnswer:
    """One chunk checked and scored: its valid rows' answers and its rejected rows' reasons."""

    valid: np.ndarray  # (rows,) bool: rows inside the schema, scored
    probability: np.ndarray  # (valid rows,) float64
    label: np.ndarray  # (valid rows,) int8
    fields: list[str]  # per rejected row: its first field outside the schema
    reasons: list[str]  # per rejected row: every problem, each naming its field

    @property
    def read(self) -> int:
        """Rows in the chunk."""
        return len(self.valid)

    @property
    def scored(self) -> int:
        """Rows answered."""
        return len(self.probability)

    @property
    def rejected(self) -> int:
        """Rows refused (read = scored + rejected)."""
        return len(self.reasons)


def answer_chunk(
    columns: Mapping[str, np.ndarray],
    not_numbers: Mapping[str, np.ndarray],
    probabilities: Callable[[np.ndarray], np.ndarray],
    threshold: float,
) -> ChunkAnswer:
    """Check a chunk's rows against the schema and score those inside it, as the API would.

    Args:
        columns: Each feature's values as floats, NaN where there is none.
        not_numbers: Per feature, the rows whose text does not read as a number.
        probabilities: The scorer: an (n, 7) float array in schema order -> positive-class probabilities.
        threshold: The version's decision threshold (label = probability >= threshold, as the API).

    Raises:
        ModelAnswerError: the model answered a valid row with something that is not a probability.
    """
    codes = row_problems(columns, not_numbers)
    features = np.column_stack([columns[name] for name in FEATURE_NAMES]).astype(np.float64, copy=False)
    valid = np.all(codes == VALID, axis=1)
    inside = np.ascontiguousarray(features[valid])
    proba = np.asarray(probabilities(inside), dtype=np.float64) if len(inside) else np.empty(0)
    if proba.shape != (len(inside),) or not np.all(np.isfinite(proba) & (proba >= 0) & (proba <= 1)):
        bad = np.flatnonzero(~(np.isfinite(proba) & (proba >= 0) & (proba <= 1)))
        raise ModelAnswerError(
            f"the model answered {len(bad) or proba.shape} row(s) with no probability in [0, 1]"
            + (f" (e.g. {proba[bad[0]]!r})" if len(bad) else "")
        )
    rejected = np.flatnonzero(~valid)
    return ChunkAnswer(
        valid=valid,
        probability=proba,
        label=(proba >= threshold).astype(np.int8),
        fields=[FEATURE_NAMES[int(np.argmax(codes[row] != VALID))] for row in rejected],
        reasons=[problem_text(codes[row], features[row]) for row in rejected],
    )


def default_id_columns(columns: Sequence[str]) -> list[str]:
    """The input columns passed through by default: ``id``, and names starting ``id_`` or ending ``_id``."""
    return [
        name
        for name in columns
        if name not in FEATURE_NAMES
        and (name.lower() == "id" or name.lower().startswith("id_") or name.lower().endswith("_id"))
    ]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_count(configured: int | None, chunks: int | None = None) -> int:
    """Scoring processes: as configured, else one per usable core; never more than there are chunks."""
    count = configured or usable_cores()
    return max(1, min(count, chunks)) if chunks is not None else count


@dataclass(frozen=True)
class Counts:
    """Rows of a run or a file: every row read is scored or rejected."""

    read: int = 0
    scored: int = 0
    rejected: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.read + other.read, self.scored + other.scored, self.rejected + other.rejected)

    @property
    def balanced(self) -> bool:
        """Whether scored + rejected == read."""
        return self.scored + self.rejected == self.read


@dataclass(frozen=True)
class Progress:
    """How far a run is: rows done (finished chunks, earlier attempts included) of the expected total."""

    rows: int
    total: int | None  # None when unknown (a compressed CSV); an estimate for CSV (lines counted)
    elapsed_s: float  # since this attempt started
    rows_this_attempt: int  # rows this attempt scored (the rate counts only these)

    @property
    def rate(self) -> float:
        """Rows per second of this attempt."""
        return self.rows_this_attempt / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        """Share done in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.rows / self.total)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at this attempt's rate, or None when it cannot be told yet."""
        if not self.total or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.rows) / self.rate)

    def line(self) -> str:
        """e.g. ``1,200,000 of ~10,000,000 rows (12 %), 234,567 rows/s, ETA 38 s``."""
        done = f"{self.rows:,}"
        if self.total:
            done += f" of ~{self.total:,} rows ({100 * (self.fraction or 0):.0f} %)"
        else:
            done += " rows"
        eta = self.eta_s
        return f"{done}, {self.rate:,.0f} rows/s" + (f", ETA {eta:.0f} s" if eta is not None else "")


@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs the same run: a partial output is continued only by a run equal to it."""

    input_hash: str
    model_name: str
    model_version: str
    threshold: float
    output_format: str
    chunk_rows: int
    id_columns: tuple[str, ...]
    layout: int = LAYOUT

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = asdict(self)
        data["id_columns"] = list(self.id_columns)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunIdentity:
        """The identity written by :meth:`to_dict` (unknown keys ignored, missing ones refused)."""
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["id_columns"] = tuple(values.get("id_columns", ()))
        return cls(**values)

    def differences(self, other: RunIdentity) -> list[str]:
        """How ``other`` (the partial run found) differs from this one, in words; empty when equal."""
        words = {
            "input_hash": "input content",
            "model_name": "model",
            "model_version": "model version",
            "threshold": "threshold",
            "output_format": "format",
            "chunk_rows": "chunk rows",
            "id_columns": "id columns",
            "layout": "output layout",
        }
        found = []
        for name, word in words.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if name == "input_hash":
                    found.append(f"{word} (sha256 {theirs[:12]}, now {mine[:12]})")
                else:
                    found.append(f"{word} {_shown(theirs)} (now {_shown(mine)})")
        return found


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return str(value)
