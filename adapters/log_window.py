"""Reading a window of the prediction log for monitoring: one version's champion answers, in time order.

A window is read in batches from one consistent snapshot of the log (its row count first, so the run
can plan its chunks, then its rows), never as one frame: memory stays flat however busy the window
was. Rows come ordered by ``(created_at, id)`` so ``after`` (the last row already seen) is an exact
watermark even when several rows share a timestamp. Rows the retention flow archived are read from
the archive (``adapters.log_archive``) and merged in the same order.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from sqlalchemy import BigInteger, Connection, Engine, String, and_, cast, func, or_, select, type_coerce

from adapters import log_archive
from adapters.prediction_log import (
    CREATED_AT,
    MODEL_VERSION,
    PREDICTION_ID,
    ROUTE,
    ROUTE_CHAMPION,
    feedback,
    log_exists,
    predictions,
)
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY

if TYPE_CHECKING:
    import pandas as pd

LABEL: Final = "label"
WINDOW_COLUMNS: Final[tuple[str, ...]] = (
    PREDICTION_ID,
    CREATED_AT,
    *FEATURE_NAMES,
    PROBABILITY,
    PREDICTION,
    LABEL,
)
READ_BATCH: Final = 100_000
# A label arrives after its prediction, so labels received before the window (less this margin for the
# clocks of several API replicas) cannot belong to it.
_CLOCK_MARGIN: Final = timedelta(hours=1)

Watermark = tuple[datetime, str]  # (created_at, id) of a row


def columns_of(features: bool) -> list[str]:
    """The columns of a window's frames (``WINDOW_COLUMNS``, without the features when not read)."""
    return [name for name in WINDOW_COLUMNS if features or name not in FEATURE_NAMES]


def _window_filter(model_version: str, after: Watermark | None, until: datetime | None) -> list[Any]:
    """The WHERE of one version's champion rows after ``after`` and up to ``until``.

    Only the champion route: a canary's answers are judged by the live gate, not by monitoring.
    """
    created = predictions.c[CREATED_AT]
    conditions: list[Any] = [
        predictions.c[MODEL_VERSION] == model_version,
        predictions.c[ROUTE] == ROUTE_CHAMPION,
    ]
    if after is not None:
        after_at, after_id = after
        conditions.append(
            or_(created > after_at, and_(created == after_at, predictions.c[PREDICTION_ID] > after_id))
        )
    if until is not None:
        conditions.append(created <= until)
    return conditions


def _rows_query(dialect: str, conditions: list[Any], columns: list[str]) -> Any:
    """The SELECT of the window's rows (label aside) ordered by ``(created_at, id)``.

    Timestamps come in the form cheapest to turn into a column: SQLite's stored ISO text (parsed in one
    vectorised call), Postgres's as integer microseconds since the epoch (exact, and binary on the wire).
    """
    created = predictions.c[CREATED_AT]
    if dialect == "sqlite":
        created_col: Any = type_coerce(created, String)
    elif dialect == "postgresql":
        created_col = cast(func.extract("epoch", created) * 1_000_000, BigInteger)
    else:
        created_col = created
    selected = [
        created_col.label(CREATED_AT) if name == CREATED_AT else predictions.c[name]
        for name in columns
        if name != LABEL
    ]
    return select(*selected).where(*conditions).order_by(created, predictions.c[PREDICTION_ID])


def _batches(connection: Connection, query: Any, batch_rows: int) -> Iterator[Sequence[Any]]:
    """The query's rows as the driver's plain tuples, ``batch_rows`` at a time.

    SQLAlchemy's per-row processing costs more than the read itself, and these columns need none.
    Postgres: a server-side (named) cursor in the connection's transaction, so the server sends rows as
    they are fetched; a client cursor would hold the whole result. (SQLAlchemy's ``stream_results``
    fetches one row ahead of the driver's cursor, so its cursor cannot be read directly.) SQLite's
    cursor steps through the file as it is fetched.
    """
    if connection.dialect.name == "postgresql":
        compiled = query.compile(dialect=connection.dialect)
        driver = connection.connection.driver_connection
        assert driver is not None
        name = f"reggaeton_window_{uuid.uuid4().hex[:12]}"
        with driver.cursor(name=name, binary=True) as cursor:  # binary: numbers without text parsing
            cursor.execute(str(compiled), compiled.params)
            while rows := cursor.fetchmany(batch_rows):
                yield rows
        return
    result = connection.execute(query)
    try:
        while rows := result.cursor.fetchmany(batch_rows):
            yield rows
    finally:
        result.close()


def _id_keys(ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ids as fixed-width bytes and a 64-bit hash of them (FNV-1a over 4-byte words, vectorised)."""
    raw = np.ascontiguousarray(np.asarray(ids, dtype="S36"))
    words = raw.view(np.uint32).reshape(len(raw), 9)
    hashes = np.full(len(raw), 0xCBF29CE484222325, dtype=np.uint64)
    for column in range(9):
        hashes ^= words[:, column].astype(np.uint64)
        hashes *= np.uint64(0x100000001B3)
    return raw, hashes


class Labels:
    """Feedback labels by prediction id, kept compact: ids sorted by a 64-bit hash, one byte per label.

    Placing labels by id instead of joining: a join costs an index probe per window row (1.6 s per
    million rows on SQLite, measured); here one query, then a binary search of integers per batch
    (of the 36-byte ids it took four times longer), each hit checked against the id itself.
    """

    def __init__(self, ids: Any, labels: np.ndarray) -> None:
        raw, hashes = _id_keys(ids)
        order = np.argsort(hashes, kind="stable")
        self._ids, self._hashes, self._labels = raw[order], hashes[order], labels[order]

    @classmethod
    def load(cls, connection: Connection, after: Watermark | None) -> Labels:
        """The labels that can belong to a window after ``after`` (all of them without one)."""
        query = select(feedback.c.prediction_id, feedback.c.label)
        if after is not None:
            query = query.where(feedback.c.received_at >= after[0] - _CLOCK_MARGIN)
        id_parts, label_parts = [], []
        for rows in _batches(connection, query, READ_BATCH):
            ids, labels = zip(*rows, strict=True)
            id_parts.append(np.array(ids, dtype="S36"))
            label_parts.append(np.array(labels, dtype=np.int8))
        if not id_parts:
            return cls(np.array([], dtype="S36"), np.array([], dtype=np.int8))
        return cls(np.concatenate(id_parts), np.concatenate(label_parts))

    def of(self, ids: Any) -> np.ndarray:
        """The label of each id (float; NaN where none arrived)."""
        keys, hashes = _id_keys(ids)
        out = np.full(len(keys), np.nan)
        if not len(self._ids) or not len(keys):
            return out
        positions = np.minimum(np.searchsorted(self._hashes, hashes), len(self._ids) - 1)
        hit = self._hashes[positions] == hashes
        exact = hit & (self._ids[positions] == keys)
        out[exact] = self._labels[positions[exact]]
        for row in np.flatnonzero(hit & ~exact):  # two ids with one hash: look at the others
            position = positions[row] + 1
            while position < len(self._ids) and self._hashes[position] == hashes[row]:
                if self._ids[position] == keys[row]:
                    out[row] = self._labels[position]
                    break
                position += 1
        return out


def _record_type(names: list[str]) -> np.dtype[Any]:
    """The NumPy record type of a batch of driver tuples: ids and timestamps as objects, numbers native."""
    kinds = {PREDICTION_ID: "O", CREATED_AT: "O", PREDICTION: "i8"}
    return np.dtype([(name, kinds.get(name, "f8")) for name in names])


def _frame(rows: Sequence[Any], columns: list[str], labels: Labels) -> pd.DataFrame:
    """One batch of driver tuples as a window frame: timestamps parsed (UTC), labels placed.

    Through a NumPy record array: three times faster than ``DataFrame.from_records`` on these tuples.
    """
    import pandas as pd

    names = [name for name in columns if name != LABEL]
    records = np.array(rows, dtype=_record_type(names))
    created = records[CREATED_AT]
    if len(created) and isinstance(created[0], int):  # Postgres: microseconds since the epoch
        parsed = pd.to_datetime(created.astype(np.int64), unit="us", utc=True)
    else:
        parsed = pd.to_datetime(created, utc=True, format="ISO8601")
    data: dict[str, Any] = {name: records[name] for name in names}
    # Ids stay Python strings: pandas 3 would copy them into Arrow strings (1.4 s per million rows).
    data[PREDICTION_ID] = pd.Series(records[PREDICTION_ID], dtype=object)
    data[CREATED_AT] = pd.Series(parsed).dt.as_unit("us")  # the log's resolution
    data[LABEL] = labels.of(records[PREDICTION_ID])
    return pd.DataFrame({name: data[name] for name in columns})


def _key_upto(frame: pd.DataFrame, bound: Watermark) -> int:
    """How many leading rows of a frame in ``(created_at, id)`` order are at or before ``bound``."""
    import pandas as pd

    at = frame[CREATED_AT].dt.as_unit("ns").array.asi8  # nanoseconds since the epoch (UTC)
    bound_at = pd.Timestamp(bound[0]).as_unit("ns").value
    low = int(np.searchsorted(at, bound_at, side="left"))
    high = int(np.searchsorted(at, bound_at, side="right"))
    ties = frame[PREDICTION_ID].to_numpy()[low:high]
    return low + int(np.count_nonzero(ties <= bound[1]))


def _last_key(frame: pd.DataFrame) -> Watermark:
    import pandas as pd

    return pd.Timestamp(frame[CREATED_AT].iloc[-1]).to_pydatetime(), str(frame[PREDICTION_ID].iloc[-1])


def merge_sorted(streams: list[Iterator[pd.DataFrame]]) -> Iterator[pd.DataFrame]:
    """Streams of frames, each in ``(created_at, id)`` order, merged into one stream in that order.

    Each step emits every buffered row up to the smallest of the streams' last buffered keys: nothing
    later can come before those. Memory: one frame per stream.
    """
    import pandas as pd

    buffers: list[pd.DataFrame | None] = [None] * len(streams)

    def refill(i: int) -> None:
        buffers[i] = next((frame for frame in streams[i] if len(frame)), None)

    for i in range(len(streams)):
        refill(i)
    while True:
        active = [i for i, frame in enumerate(buffers) if frame is not None]
        if not active:
            return
        if len(active) == 1:
            (i,) = active
            frame = buffers[i]
            assert frame is not None
            yield frame
            refill(i)
            continue
        bound = min(_last_key(frame) for frame in buffers if frame is not None)
        ready = []
        for i in active:
            frame = buffers[i]
            assert frame is not None
            cut = _key_upto(frame, bound)
            ready.append(frame.iloc[:cut])
            buffers[i] = frame.iloc[cut:] if cut < len(frame) else None
            if buffers[i] is None:
                refill(i)
        merged = pd.concat(ready, ignore_index=True)
        yield merged.sort_values([CREATED_AT, PREDICTION_ID], kind="stable", ignore_index=True)


def _archive_filter(
    frame: pd.DataFrame, model_version: str, after: Watermark | None, until: datetime | None
) -> Any:
    """The archived rows that belong to the window (the live query's conditions, on a frame)."""
    import pandas as pd

    keep = (frame[MODEL_VERSION] == model_version) & (frame[ROUTE] == ROUTE_CHAMPION)
    created = frame[CREATED_AT]
    if after is not None:
        after_at = pd.Timestamp(after[0])
        keep &= (created > after_at) | ((created == after_at) & (frame[PREDICTION_ID] > after[1]))
    if until is not None:
        keep &= created <= pd.Timestamp(until)
    return keep


class Window:
    """One snapshot of a window: how many rows it has, and its rows in batches (read once).

    Rows archived by the retention flow (files listed as done in the snapshot) are read from the
    archive and merged with the live rows in order.
    """

    def __init__(
        self,
        connection: Connection | None,
        model_version: str,
        after: Watermark | None,
        until: datetime | None,
        features: bool,
        archive: Path | None = None,
    ) -> None:
        self._connection = connection
        self._version, self._after, self._until = model_version, after, until
        self._conditions = _window_filter(model_version, after, until)
        self._archive = archive
        self.columns = columns_of(features)
        self._parts: list[log_archive.Part] = []
        self.rows = 0
        if connection is None:
            return
        count = select(func.count()).select_from(predictions).where(*self._conditions)
        self.rows = int(connection.execute(count).scalar_one())
        if archive is not None:
            self._parts = log_archive.done_parts(
                connection, after=None if after is None else after[0], until=until
            )
            self.rows += sum(
                int(_archive_filter(frame, model_version, after, until).sum())
                for frame in self._archived_batches(_ARCHIVE_KEY_COLUMNS, READ_BATCH)
            )

    def _archived_batches(self, columns: tuple[str, ...], batch_rows: int) -> Iterator[pd.DataFrame]:
        assert self._archive is not None
        for part in self._parts:
            yield from log_archive.read_part(self._archive, part, columns, batch_rows)

    def _archived(self, batch_rows: int) -> Iterator[pd.DataFrame]:
        """The window's archived rows in order: each day's files merged (a late row's file overlaps)."""
        assert self._archive is not None
        archive = self._archive
        needed = tuple(dict.fromkeys([*_ARCHIVE_KEY_COLUMNS, *self.columns]))

        def rows_of(part: log_archive.Part) -> Iterator[pd.DataFrame]:
            for frame in log_archive.read_part(archive, part, needed, batch_rows):
                kept = frame[_archive_filter(frame, self._version, self._after, self._until)]
                kept = kept.assign(
                    **{
                        CREATED_AT: kept[CREATED_AT].dt.as_unit("us"),
                        LABEL: kept[LABEL].astype("float64"),
                    }
                )
                yield kept[self.columns].reset_index(drop=True)

        days: dict[str, list[log_archive.Part]] = {}
        for part in self._parts:
            days.setdefault(part.path.split("/")[1], []).append(part)
        for parts in days.values():
            yield from merge_sorted([rows_of(part) for part in parts])

    def frames(self, batch_rows: int = READ_BATCH) -> Iterator[pd.DataFrame]:
        """The window's rows in ``(created_at, id)`` order, ``batch_rows`` at a time (at least one frame)."""
        connection = self._connection
        if connection is None or not self.rows:
            yield _frame([], self.columns, Labels(np.array([], dtype="S36"), np.array([], dtype=np.int8)))
            return
        if self._parts:
            yield from merge_sorted([self._archived(batch_rows), self._live(connection, batch_rows)])
        else:
            yield from self._live(connection, batch_rows)

    def _live(self, connection: Connection, batch_rows: int) -> Iterator[pd.DataFrame]:
        labels = Labels.load(connection, self._after)
        query = _rows_query(connection.dialect.name, self._conditions, self.columns)
        for rows in _batches(connection, query, batch_rows):
            yield _frame(rows, self.columns, labels)


# What deciding whether an archived row is in a window takes.
_ARCHIVE_KEY_COLUMNS: Final = (PREDICTION_ID, CREATED_AT, MODEL_VERSION, ROUTE)


@contextlib.contextmanager
def open_window(
    engine: Engine,
    model_version: str,
    *,
    after: Watermark | None = None,
    until: datetime | None = None,
    features: bool = True,
    archive: Path | None = None,
) -> Iterator[Window]:
    """A window of one model version's logged champion answers, from one snapshot of the log.

    Args:
        engine: The prediction log.
        model_version: Only rows served by this version.
        after: ``(created_at, id)`` of the last row already processed; rows strictly after it.
        until: Only rows created at or before this instant.
        features: Read the feature columns too (False: the rest only, for realized performance).
        archive: The archive folder: rows the retention flow moved there are read too.

    Yields:
        The window: ``rows`` (counted in the snapshot) and ``frames()``, with columns ``columns_of``:
        ``created_at`` as UTC timestamps, ``label`` as float (NaN when no feedback arrived).
    """
    # A log serving has not written to yet has no tables: an empty window (creating them is serving's job).
    if not log_exists(engine):
        yield Window(None, model_version, after, until, features)
        return
    with engine.connect() as connection:
        # One snapshot for the count, the archive's manifest, the labels and the rows: rows committed
        # meanwhile wait for the next run instead of changing this one's plan halfway, and a row moved
        # to the archive meanwhile is read once, from where the snapshot has it.
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN")
        elif connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        yield Window(connection, model_version, after, until, features, archive)


def read_window(
    engine: Engine,
    model_version: str,
    *,
    after: Watermark | None = None,
    until: datetime | None = None,
    features: bool = True,
    archive: Path | None = None,
) -> pd.DataFrame:
    """The whole window as one frame (small windows, tests; monitoring streams ``open_window``)."""
    import pandas as pd

    with open_window(
        engine, model_version, after=after, until=until, features=features, archive=archive
    ) as window:
        parts = list(window.frames())
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
