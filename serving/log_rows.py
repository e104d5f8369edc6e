"""One model batch of prediction-log rows, and its two encodings: a journal line and SQL parameters.

The journal (:mod:`serving.spool`) stores :class:`LogEntry` as one JSON line; the writer
(:mod:`serving.log_writer`) inserts its rows with :class:`Insert`. Both read the columns from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import orjson
from sqlalchemy import Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from adapters.prediction_log import (
    CREATED_AT,
    MODEL_NAME,
    MODEL_VERSION,
    PREDICTION_ID,
    ROUTE,
    ROUTE_CHAMPION,
    predictions,
)
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the journal: a segment number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(slots=True)
class LogEntry:
    """The rows of one model batch: ids, features, probabilities and labels, same length and order.

    ``route`` says who answered them (``prediction_log.ROUTES``): the champion, or a canary.
    """

    ids: list[str]
    created_at: datetime
    model_name: str
    model_version: str
    features: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    route: str = ROUTE_CHAMPION
    end: Position | None = None  # where the entry ends in the journal, once appended

    def rows(self, created_at: Any) -> list[tuple[Any, ...]]:
        """One tuple per prediction, in ``ROW_COLUMNS`` order, with ``created_at`` as given."""
        name, version, route = self.model_name, self.model_version, self.route
        return [
            (pid, created_at, name, version, *values, proba, label, route)
            for pid, values, proba, label in zip(
                self.ids,
                self.features.tolist(),
                self.probabilities.tolist(),
                self.labels.tolist(),
                strict=True,
            )
        ]


# The order of ``LogEntry.rows``: every column of the ``predictions`` table.
ROW_COLUMNS: Final = (
    PREDICTION_ID,
    CREATED_AT,
    MODEL_NAME,
    MODEL_VERSION,
    *FEATURE_NAMES,
    PROBABILITY,
    PREDICTION,
    ROUTE,
)


# A value of each Python type the writer passes (``LogEntry.rows``), to find processors that keep it.
_SAMPLE: Final[dict[type, object]] = {float: 0.25, int: 1, str: "x"}


def _unchanged(process: Callable[[Any], Any], sample: object) -> bool:
    out = process(sample)
    return type(out) is type(sample) and out == sample


class Insert:
    """An INSERT of ``columns`` compiled once for the engine's dialect and run on the driver's cursor.

    By default the ``predictions`` table's (``ROW_COLUMNS``). Letting SQLAlchemy compile and process
    every row's parameters cost about 10 us per row; plain tuples cost about 4. Values still go through
    the dialect's bind processors: ``created_at``'s once per entry (:meth:`created_at`), the others per
    row unless they return the values this writer passes unchanged (SQLite's ``Float`` processor turns a
    Python float into itself). A dialect with named parameters gets dicts. On SQLite and Postgres a row
    whose key is already there is skipped (a replayed journal, or a retry after a commit whose answer was
    lost), so each row is inserted exactly once.
    """

    def __init__(
        self,
        engine: Engine,
        table: Table = predictions,
        columns: tuple[str, ...] = ROW_COLUMNS,
        key: tuple[str, ...] = (PREDICTION_ID,),
    ) -> None:
        dialect = engine.dialect
        self._columns = columns
        statement: Any = table.insert()
        if dialect.name in ("sqlite", "postgresql"):
            module: Any = sqlite if dialect.name == "sqlite" else postgresql
            statement = module.insert(table).on_conflict_do_nothing(index_elements=[table.c[k] for k in key])
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        self.sql = str(compiled)
        self._order = [columns.index(name) for name in compiled.positiontup or ()]
        self._positional = bool(compiled.positional)
        processors = {
            name: table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
        }
        self.created_at = processors.pop(CREATED_AT) or (lambda value: value)
        self._per_row = [
            (columns.index(name), fn)
            for name, fn in processors.items()
            if fn is not None and not _unchanged(fn, _SAMPLE[table.c[name].type.python_type])
        ]

    def parameters(self, entries: list[LogEntry]) -> list[Any]:
        """The driver's parameters for every row of ``entries`` (of the ``predictions`` table)."""
        return self.prepared(
            [row for entry in entries for row in entry.rows(self.created_at(entry.created_at))]
        )

    def prepared(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        """The driver's parameters for rows in ``columns`` order, ``created_at`` already processed."""
        if self._per_row:
            for i, row in enumerate(rows):
                values = list(row)
                for index, process in self._per_row:
                    values[index] = process(values[index])
                rows[i] = tuple(values)
        if not self._positional:
            return [dict(zip(self._columns, row, strict=True)) for row in rows]
        if self._order != list(range(len(self._columns))):
            return [tuple(row[i] for i in self._order) for row in rows]
        return rows


def encode(entry: LogEntry) -> bytes:
    """One journal line for a model batch."""
    record = {
        "t": entry.created_at.isoformat(),
        "n": entry.model_name,
        "v": entry.model_version,
        "r": entry.route,
        "ids": entry.ids,
        "x": np.ascontiguousarray(entry.features, dtype=np.float64),
        "p": np.ascontiguousarray(entry.probabilities, dtype=np.float64),
        "y": np.ascontiguousarray(entry.labels, dtype=np.int64),
    }
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> LogEntry:
    """The model batch of one journal line (a line without a route, written before routes, is champion's)."""
    record = orjson.loads(line)
    return LogEntry(
        list(record["ids"]),
        datetime.fromisoformat(record["t"]),
        record["n"],
        record["v"],
        np.asarray(record["x"], dtype=np.float64).reshape(-1, len(FEATURE_NAMES)),
        np.asarray(record["p"], dtype=np.float64),
        np.asarray(record["y"], dtype=np.int64),
        record.get("r", ROUTE_CHAMPION),
    )
