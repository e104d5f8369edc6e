"""The prediction log's archive: rows older than the retention period, moved to partitioned Parquet.

Layout under the archive folder (``settings.archive_path``; a volume every worker shares in containers)::

    predictions/date=YYYY-MM-DD/part-<HHMMSSffffff>-<token>.parquet
    shadow_batches/date=YYYY-MM-DD/part-<HHMMSSffffff>-<token>.parquet
    .staging/                  files being written (emptied at the start of each run)

A predictions file holds the rows of one day in ``(created_at, id)`` order with every column of the
live table plus the feedback label and when it arrived (``label``, ``label_received_at``; null when
none came), so the feedback table needs no archive of its own: its rows leave with their prediction.
Each file is listed in ``log_archive_parts`` (the manifest, in the log's database).

Moving one file's rows, so that nothing is lost or doubled whatever fails:
1. the rows are read and written to a file in ``.staging`` (a failed write deletes nothing);
2. the file is entered in the manifest (``deleted_at`` empty), then renamed into its day's folder;
3. one transaction deletes exactly those rows from the live tables (by key; counts checked) and sets
   ``deleted_at``.
A run that starts finds the files a crash left between 2 and 3 (``deleted_at`` empty): a file in place
has its rows deleted now (it is complete: renamed only once written), a file not yet renamed is
forgotten (its rows are still live and will be archived again). Readers read only files whose rows
left the live log (``deleted_at`` set), so no row is ever read twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, update

from adapters.prediction_log import (
    CREATED_AT,
    FEEDBACK_PREDICTION_ID,
    MODEL_NAME,
    MODEL_VERSION,
    PREDICTION_ID,
    ROUTE,
    SHADOW_ANSWERS,
    SHADOW_BATCH_ID,
    SHADOW_ROWS,
    archive_parts,
    feedback,
    predictions,
    shadow_batches,
)
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

logger = logging.getLogger(__name__)

LABEL: Final = "label"
LABEL_RECEIVED_AT: Final = "label_received_at"
STAGING: Final = ".staging"
_FETCH_ROWS: Final = 50_000
_DELETE_BATCH: Final = 5_000  # keys per DELETE statement (SQLite allows 32,766 parameters)


class ArchiveError(RuntimeError):
    """The archive and the live log disagree (rows missing): nothing more is moved until someone looks."""


@dataclass(frozen=True)
class Source:
    """A live table whose old rows are archived: its key, its columns in the files, how rows are read."""

    table: Table
    key: str  # its primary key's one column
    columns: tuple[str, ...]  # as written to the files (predictions: plus the label and its arrival)

    @property
    def name(self) -> str:
        return self.table.name


PREDICTIONS: Final = Source(
    predictions,
    PREDICTION_ID,
    (
        PREDICTION_ID,
        CREATED_AT,
        MODEL_NAME,
        MODEL_VERSION,
        ROUTE,
        *FEATURE_NAMES,
        PROBABILITY,
        PREDICTION,
        LABEL,
        LABEL_RECEIVED_AT,
    ),
)
# A shadow batch moves whole, on its ``created_at`` (its newest request): its rows as they are live, the
# answers still one JSON array (``prediction_log.shadow_answers`` reads them; so does DuckDB's json_each).
SHADOW: Final = Source(
    shadow_batches,
    SHADOW_BATCH_ID,
    (SHADOW_BATCH_ID, MODEL_VERSION, MODEL_NAME, CREATED_AT, SHADOW_ROWS, SHADOW_ANSWERS),
)
SOURCES: Final = (PREDICTIONS, SHADOW)
# Tables an older version archived that this one no longer has: their rows live on elsewhere.
# ``shadow_predictions``: a row per shadow answer until log revision 0004 moved them to ``shadow_batches``.
RETIRED_SOURCES: Final = frozenset({"shadow_predictions"})


def _schema(source: Source) -> pa.Schema:
    import pyarrow as pa

    timestamp = pa.timestamp("us", tz="UTC")
    kinds: dict[str, pa.DataType] = {
        CREATED_AT: timestamp,
        LABEL_RECEIVED_AT: timestamp,
        PREDICTION: pa.int64(),
        LABEL: pa.int64(),
        SHADOW_ROWS: pa.int64(),
        **{name: pa.float64() for name in (*FEATURE_NAMES, PROBABILITY)},
    }
    return pa.schema([(name, kinds.get(name, pa.string())) for name in source.columns])


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _select(source: Source, start: datetime, end: datetime) -> Any:
    """A day's rows (``start <= created_at < end``) in key order, with their label for predictions."""
    table = source.table
    created = table.c[CREATED_AT]
    if source is PREDICTIONS:
        columns = [
            *(table.c[name] for name in source.columns if name not in (LABEL, LABEL_RECEIVED_AT)),
            feedback.c.label.label(LABEL),
            feedback.c.received_at.label(LABEL_RECEIVED_AT),
        ]
        frm: Any = table.outerjoin(feedback, feedback.c[FEEDBACK_PREDICTION_ID] == table.c[PREDICTION_ID])
    else:
        columns = [table.c[name] for name in source.columns]
        frm = table
    return (
        select(*columns)
        .select_from(frm)
        .where(created >= start, created < end)
        .order_by(created, table.c[source.key])
    )


def _record_batch(source: Source, rows: Sequence[Any]) -> pa.RecordBatch:
    import pyarrow as pa

    schema = _schema(source)
    columns = list(zip(*rows, strict=True))
    arrays = []
    for field, values in zip(schema, columns, strict=True):
        if pa.types.is_timestamp(field.type):
            values = tuple(None if value is None else _utc(value) for value in values)
        arrays.append(pa.array(values, type=field.type))
    return pa.record_batch(arrays, schema=schema)


@dataclass(frozen=True)
class Part:
    """One archive file as the manifest lists it."""

    path: str  # under the archive folder
    source: str
    rows: int
    first_created_at: datetime
    last_created_at: datetime
    cutoff: datetime


def _keys(source: Source, batch: pa.RecordBatch) -> list[Any]:
    return batch.column(source.key).to_pylist()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Staged:
    """A file written in staging: its rows' keys and time range."""

    path: Path
    token: str
    keys: list[Any]
    first_at: datetime
    last_at: datetime


class _StagedFile:
    """A Parquet file being written in staging."""

    def __init__(self, staging: Path, source: Source) -> None:
        import pyarrow.parquet as pq

        self.token = secrets.token_hex(6)
        self.path = staging / f"{source.name}-{self.token}.parquet"
        self.writer = pq.ParquetWriter(self.path, _schema(source), compression="zstd")
        self.source = source
        self.keys: list[Any] = []
        self.times: list[datetime] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch, row_group_size=_FETCH_ROWS)
        self.keys += _keys(self.source, batch)
        created = batch.column(CREATED_AT)
        self.times += [created[0].as_py(), created[-1].as_py()]

    def close(self) -> Staged:
        """Finish the file and make it durable before it is renamed into place."""
        self.writer.close()
        with self.path.open("rb") as file:
            os.fsync(file.fileno())
        return Staged(self.path, self.token, self.keys, self.times[0], self.times[-1])


def _write_staged(
    connection: Connection, source: Source, span: tuple[datetime, datetime], staging: Path, max_rows: int
) -> Iterator[Staged]:
    """Write the span's rows to staging files of at most ``max_rows`` rows, yielding each when done."""
    # Postgres: a server-side cursor (a day can hold millions of rows); SQLAlchemy's own fetchmany.
    result = connection.execution_options(stream_results=True, yield_per=_FETCH_ROWS).execute(
        _select(source, *span)
    )
    current: _StagedFile | None = None
    try:
        while rows := result.fetchmany(_FETCH_ROWS):
            batch = _record_batch(source, rows)
            offset = 0
            while offset < batch.num_rows:
                current = current or _StagedFile(staging, source)
                piece = batch.slice(offset, max_rows - len(current.keys))
                current.write(piece)
                offset += piece.num_rows
                if len(current.keys) >= max_rows:
                    staged, current = current.close(), None
                    yield staged
        if current is not None:
            staged, current = current.close(), None
            yield staged
    finally:
        result.close()
        if current is not None:  # a failure halfway: the staged file is left to the next run's cleanup
            current.writer.close()


def _delete_rows(connection: Connection, source: Source, keys: Sequence[Any]) -> int:
    """Delete these rows from the live table (predictions: their feedback first); rows deleted."""
    table = source.table
    deleted = 0
    for first in range(0, len(keys), _DELETE_BATCH):
        batch = keys[first : first + _DELETE_BATCH]
        if source is PREDICTIONS:
            connection.execute(delete(feedback).where(feedback.c[FEEDBACK_PREDICTION_ID].in_(batch)))
        deleted += connection.execute(delete(table).where(table.c[source.key].in_(batch))).rowcount
    return deleted


def _finish(engine: Engine, source: Source, part: str, keys: Sequence[Any]) -> None:
    """Delete a placed file's rows from the live log and mark it done, in one transaction."""
    with engine.begin() as connection:
        deleted = _delete_rows(connection, source, keys)
        if deleted != len(keys):
            # Rolled back: the file stays listed as not done, and the rows live, until someone looks.
            raise ArchiveError(
                f"{part}: {len(keys)} rows written but {deleted} found in {source.name} to delete"
            )
        connection.execute(
            update(archive_parts).where(archive_parts.c.part == part).values(deleted_at=datetime.now(UTC))
        )


def recover(engine: Engine, folder: Path) -> int:
    """Finish what a run interrupted (see the module docstring); returns the files finished."""
    import pyarrow.parquet as pq

    shutil.rmtree(folder / STAGING, ignore_errors=True)
    with engine.connect() as connection:
        pending = connection.execute(
            select(archive_parts.c.part, archive_parts.c.source).where(archive_parts.c.deleted_at.is_(None))
        ).all()
    finished = 0
    for part, source_name in pending:
        path = folder / part
        if source_name in RETIRED_SOURCES:
            # Interrupted before its rows left a table the log has since migrated (the rows moved
            # with it, still live): the file is forgotten, so no row is ever in both.
            with engine.begin() as connection:
                connection.execute(delete(archive_parts).where(archive_parts.c.part == part))
            path.unlink(missing_ok=True)
            logger.warning("archive: forgot %s, interrupted before its rows left %s", part, source_name)
            continue
        source = next(s for s in SOURCES if s.name == source_name)
        if not path.is_file():  # never renamed into place: its rows are live, archived again later
            with engine.begin() as connection:
                connection.execute(delete(archive_parts).where(archive_parts.c.part == part))
            logger.warning("archive: forgot %s, interrupted before it was placed", part)
            continue
        keys = pq.read_table(path, columns=[source.key]).column(source.key).to_pylist()
        _finish(engine, source, part, keys)
        finished += 1
        logger.warning("archive: finished %s (%d rows), interrupted before its rows left", part, len(keys))
    return finished


@dataclass(frozen=True)
class Moved:
    """What one run did to one live table."""

    source: str
    before: int  # rows in the live table when the run started
    older: int  # of which older than the cutoff
    archived: int  # rows moved to the archive by this run
    kept: int  # rows in the live table when the run ended
    left_older: int  # rows still older than the cutoff (late arrivals from a spool, moved next run)
    parts: int


def retention_cutoff(now: datetime, keep_days: float) -> datetime:
    """Rows created before this leave the live log: ``keep_days`` before ``now``, to the whole second."""
    return (now.astimezone(UTC) - timedelta(days=keep_days)).replace(microsecond=0)


def _count(connection: Connection, table: Table, cutoff: datetime | None = None) -> int:
    query = select(func.count()).select_from(table)
    if cutoff is not None:
        query = query.where(table.c[CREATED_AT] < cutoff)
    return int(connection.execute(query).scalar_one())


def _days(connection: Connection, table: Table, cutoff: datetime) -> Iterator[date]:
    """The UTC days holding rows older than the cutoff, oldest first."""
    created = table.c[CREATED_AT]
    day: date | None = None
    while True:
        query = select(func.min(created)).where(created < cutoff)
        if day is not None:
            query = query.where(created >= _day_start(day + timedelta(days=1)))
        oldest = connection.execute(query).scalar()
        if oldest is None:
            return
        day = _utc(oldest).date()
        yield day


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _place(engine: Engine, folder: Path, source: Source, staged: Staged, day: date, cutoff: datetime) -> str:
    """List a staged file in the manifest, rename it into its day's folder; its path under ``folder``."""
    part = f"{source.name}/date={day.isoformat()}/part-{staged.first_at:%H%M%S%f}-{staged.token}.parquet"
    with engine.begin() as connection:
        connection.execute(
            insert(archive_parts).values(
                part=part,
                source=source.name,
                rows=len(staged.keys),
                first_created_at=staged.first_at,
                last_created_at=staged.last_at,
                cutoff=cutoff,
                written_at=datetime.now(UTC),
            )
        )
    target = folder / part
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged.path, target)
    _fsync_dir(target.parent)
    return part


def archive_source(engine: Engine, folder: Path, source: Source, cutoff: datetime, max_rows: int) -> Moved:
    """Move the table's rows older than ``cutoff`` to the archive, one file per day (or ``max_rows``)."""
    with engine.connect() as connection:
        before, older = _count(connection, source.table), _count(connection, source.table, cutoff)
        days = list(_days(connection, source.table, cutoff))
    (folder / STAGING).mkdir(parents=True, exist_ok=True)
    archived = parts = 0
    for day in days:
        start, end = _day_start(day), min(_day_start(day + timedelta(days=1)), cutoff)
        with engine.connect() as reader:
            for staged in _write_staged(reader, source, (start, end), folder / STAGING, max_rows):
                part = _place(engine, folder, source, staged, day, cutoff)
                _finish(engine, source, part, staged.keys)
                archived += len(staged.keys)
                parts += 1
    with engine.connect() as connection:
        kept, left_older = _count(connection, source.table), _count(connection, source.table, cutoff)
    moved = Moved(source.name, before, older, archived, kept, left_older, parts)
    # New rows may arrive meanwhile (kept grows; a spool's late old rows make left_older > 0): fewer
    # than before would be rows lost.
    if archived + kept < before or archived + left_older < older:
        raise ArchiveError(f"rows went missing while archiving {source.name}: {moved}")
    return moved


# --- Reading the archive --------------------------------------------------------------------------------


def done_parts(
    connection: Connection,
    source: Source = PREDICTIONS,
    *,
    after: datetime | None = None,
    until: datetime | None = None,
) -> list[Part]:
    """The files whose rows left the live log, oldest first; only those holding rows in [after, until].

    Read in the caller's transaction: with the live rows read in the same snapshot, a row is found
    either here or there, never in both.
    """
    conditions: list[Any] = [archive_parts.c.source == source.name, archive_parts.c.deleted_at.is_not(None)]
    if after is not None:
        conditions.append(archive_parts.c.last_created_at >= after)
    if until is not None:
        conditions.append(archive_parts.c.first_created_at <= until)
    rows = connection.execute(
        select(archive_parts)
        .where(*conditions)
        .order_by(archive_parts.c.first_created_at, archive_parts.c.part)
    ).mappings()
    return [
        Part(
            path=row["part"],
            source=row["source"],
            rows=row["rows"],
            first_created_at=_utc(row["first_created_at"]),
            last_created_at=_utc(row["last_created_at"]),
            cutoff=_utc(row["cutoff"]),
        )
        for row in rows
    ]


def read_part(folder: Path, part: Part, columns: Sequence[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    """One file's rows in their order (``(created_at, key)``), ``batch_rows`` at a time."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(folder / part.path) as file:
        for batch in file.iter_batches(batch_size=batch_rows, columns=list(columns)):
            yield batch.to_pandas()


def labelled(engine: Engine, folder: Path) -> pd.DataFrame:
    """Archived predictions whose label arrived (columns of the file, label as an integer), oldest first."""
    import pandas as pd

    with engine.connect() as connection:
        parts = done_parts(connection)
    frames = []
    for part in parts:
        for frame in read_part(folder, part, PREDICTIONS.columns, _FETCH_ROWS):
            frames.append(frame[frame[LABEL].notna()])
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in PREDICTIONS.columns})
    found = pd.concat(frames, ignore_index=True)
    found[LABEL] = found[LABEL].astype("int64")
    return found.sort_values([CREATED_AT, PREDICTION_ID], kind="stable", ignore_index=True)


RESTORED: Final = ".restored"


def restore(engine: Engine, folder: Path, part: str) -> int:
    """Put one archived file's rows back in the live log; the file moves to ``.restored/`` under the folder.

    One transaction inserts the rows (predictions: with their feedback labels) and takes the file out of
    the manifest, so readers see the rows once: live. Run it with retention paused or ``keep_days``
    raised past the file's day, or the next run archives the rows again.

    Returns:
        The rows put back.

    Raises:
        ArchiveError: the file is not a finished part of the manifest (never archived, or restored).
    """
    import pyarrow.parquet as pq

    with engine.connect() as connection:
        listed = connection.execute(
            select(archive_parts.c.source).where(
                archive_parts.c.part == part, archive_parts.c.deleted_at.is_not(None)
            )
        ).scalar()
    if listed is None:
        raise ArchiveError(f"{part} is not an archived file of the manifest (already restored?)")
    if listed in RETIRED_SOURCES:
        raise ArchiveError(f"{part} holds rows of {listed}, a table this log no longer has: read the file")
    source = next(s for s in SOURCES if s.name == listed)
    frame = pq.read_table(folder / part).to_pandas()
    label_columns = [LABEL, LABEL_RECEIVED_AT] if source is PREDICTIONS else []
    rows = frame.drop(columns=label_columns).to_dict(orient="records")
    with engine.begin() as connection:
        connection.execute(insert(source.table), rows)
        if source is PREDICTIONS:
            labelled = frame[frame[LABEL].notna()]
            if len(labelled):
                connection.execute(
                    insert(feedback),
                    [
                        {FEEDBACK_PREDICTION_ID: pid, "label": int(label), "received_at": received}
                        for pid, label, received in zip(
                            labelled[PREDICTION_ID], labelled[LABEL], labelled[LABEL_RECEIVED_AT], strict=True
                        )
                    ],
                )
        connection.execute(delete(archive_parts).where(archive_parts.c.part == part))
    target = folder / RESTORED / part
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder / part, target)
    return len(rows)


def parts_of_day(engine: Engine, day: date) -> list[str]:
    """The finished archive files of one day, every table."""
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(archive_parts.c.part)
                .where(archive_parts.c.deleted_at.is_not(None), archive_parts.c.part.like(f"%/date={day}/%"))
                .order_by(archive_parts.c.part)
            ).scalars()
        )
