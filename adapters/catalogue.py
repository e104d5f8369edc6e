"""A catalogue on disk or in an object store, read in chunks; a scoring run's output folder, written so
that it can be resumed and appears whole.

Input: one CSV or Parquet file, or a folder of them (``.csv``, ``.csv.gz``, ``.parquet``, ``.pq``, in
path order), on a local path or an fsspec URL (``s3://``, ``gs://``, ``memory://``... where the
filesystem's package is installed). Files are streamed with pyarrow and cut into chunks of exactly
``chunk_rows`` rows per file, so the same input always gives the same chunks. CSV cells are read as text
and turned into numbers chunk by chunk, so a cell that is not a number rejects its row, not the file.

Output (a folder, ``OUT``)::

    OUT/manifest.json                 what was scored, by which version, counts, timings
    OUT/scores/part-FFFFF-CCCCCC.*    one part per chunk (file FFFFF, chunk CCCCCC), Parquet or CSV
    OUT/rejects.parquet (or .csv)     rows outside the feature schema, with row number and reason

A run writes into ``OUT.partial`` (its identity in ``run.json``, each finished chunk's counts appended to
``journal.jsonl`` after its part files were renamed into place), and renames that folder to ``OUT`` once
the manifest is written: a reader never sees a half-written output, and a run started again continues
from the chunks its journal lists. Nothing in a data file depends on time or on the order chunks
finished, so a resumed run's files are byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from reggaeton.batch import (
    FIELD,
    FILE,
    LABEL,
    MODEL_NAME,
    MODEL_VERSION,
    REASON,
    ROW,
    THRESHOLD,
    ChunkAnswer,
    ChunkKey,
    Counts,
)
from reggaeton.schema import FEATURE_NAMES, PROBABILITY

logger = logging.getLogger(__name__)

CSV: Final = "csv"
PARQUET: Final = "parquet"
SUFFIXES: Final = {".csv": CSV, ".csv.gz": CSV, ".parquet": PARQUET, ".pq": PARQUET}
EXTENSION: Final = {CSV: ".csv", PARQUET: ".parquet"}

MANIFEST: Final = "manifest.json"
SCORES_DIR: Final = "scores"
REJECTS_DIR: Final = "rejects"  # per-chunk rejects, merged into REJECTS_FILE when the run ends
REJECTS_FILE: Final = "rejects"  # + the format's extension
RUN_FILE: Final = "run.json"
JOURNAL: Final = "journal.jsonl"
LOCK: Final = ".lock"
SCORER_FILE: Final = ".scorer.pickle"  # the scorer the worker processes read (written by this package)
PARTIAL_SUFFIX: Final = ".partial"
TMP_SUFFIX: Final = ".tmp"

HASH_BLOCK: Final = 8 << 20
CSV_BLOCK: Final = 1 << 20  # bytes the CSV reader parses at a time; it reads ~40 blocks ahead
PARQUET_BATCH: Final = 65_536  # rows read from a Parquet file at a time
# What a number looks like to the text fallback (a subset of what Arrow's cast reads); anything else in
# a feature column is "not a number" for its row.
NUMBER: Final = r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)$"


class CatalogueError(ValueError):
    """An input that cannot be scored as a whole (missing, unreadable, malformed), or an output folder
    that cannot be written; the message is one line naming the file, and the column and row when known."""


# --- the input ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputFile:
    """One file of the catalogue."""

    index: int
    path: str  # on the catalogue's filesystem
    name: str  # relative to the input folder (the file's own name for a single file)
    kind: str  # CSV or PARQUET
    size: int
    sha256: str
    rows: int | None  # Parquet: exact; CSV: lines less the header (an estimate); None: unknown (gzip)
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Catalogue:
    """The files to score, hashed, and the filesystem they are read from."""

    source: str  # the URL, or the local path made absolute
    filesystem: pa_fs.FileSystem = field(repr=False)
    files: tuple[InputFile, ...]
    is_folder: bool

    @property
    def input_hash(self) -> str:
        """SHA-256 of the content (a folder's: of each file's relative name and content hash, in order)."""
        if not self.is_folder:
            return self.files[0].sha256
        digest = hashlib.sha256()
        for each in self.files:
            digest.update(f"{each.name}\0{each.sha256}\n".encode())
        return digest.hexdigest()

    @property
    def rows(self) -> int | None:
        """Rows expected (an estimate for CSV), or None when a file's count is unknown."""
        counts = [each.rows for each in self.files]
        return None if any(count is None for count in counts) else sum(c or 0 for c in counts)


def _filesystem(source: str) -> tuple[pa_fs.FileSystem, str]:
    """The filesystem and path of a local path or an fsspec URL."""
    if "://" in source and not source.startswith("file://"):
        import fsspec

        try:
            filesystem, path = fsspec.core.url_to_fs(source)
        except (ImportError, ValueError) as exc:
            raise CatalogueError(f"{source}: cannot open this URL here: {exc}") from exc
        return pa_fs.PyFileSystem(pa_fs.FSSpecHandler(filesystem)), str(path)
    path = source.removeprefix("file://")
    return pa_fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _kind(path: str) -> str | None:
    lower = path.lower()
    for suffix, kind in SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


def open_catalogue(source: str, excluded: Sequence[Path] = ()) -> Catalogue:
    """List, hash and look into the input: a file, or every CSV/Parquet file under a folder.

    Args:
        source: A local path or an fsspec URL.
        excluded: Local folders never read as input (the run's own output).

    Raises:
        CatalogueError: nothing there, no CSV or Parquet file, or a file that cannot be read.
    """
    filesystem, root = _filesystem(source)
    info = filesystem.get_file_info(root)
    if info.type == pa_fs.FileType.NotFound:
        raise CatalogueError(f"{source}: no such file or folder")
    if info.type == pa_fs.FileType.Directory:
        selected = filesystem.get_file_info(pa_fs.FileSelector(root, recursive=True))
        inside = [
            each
            for each in selected
            if each.type == pa_fs.FileType.File
            and _kind(each.path)
            and not any(Path(each.path).is_relative_to(folder) for folder in excluded)
        ]
        entries = sorted(inside, key=lambda each: each.path)
        if not entries:
            raise CatalogueError(f"{source}: no .csv, .csv.gz, .parquet or .pq file in this folder")
        prefix = root.rstrip("/") + "/"
        names = [each.path.removeprefix(prefix) for each in entries]
    else:
        if _kind(info.path) is None:
            raise CatalogueError(f"{source}: not a .csv, .csv.gz, .parquet or .pq file")
        entries, names = [info], [info.base_name]
    files = tuple(
        _look(filesystem, index, entry.path, name, entry.size or 0)
        for index, (entry, name) in enumerate(zip(entries, names, strict=True))
    )
    location = source if "://" in source and not source.startswith("file://") else root
    return Catalogue(location, filesystem, files, is_folder=info.type == pa_fs.FileType.Directory)


def _look(filesystem: pa_fs.FileSystem, index: int, path: str, name: str, size: int) -> InputFile:
    """Hash a file and read its columns (and its row count: Parquet's metadata, CSV's lines)."""
    kind = _kind(path) or CSV
    digest = hashlib.sha256()
    lines = 0
    last = b""
    with filesystem.open_input_stream(path, compression=None) as stream:
        while block := stream.read(HASH_BLOCK):
            digest.update(block)
            if kind == CSV:
                lines += block.count(b"\n")
                last = block[-1:]
    if kind == CSV and size and last != b"\n":
        lines += 1  # the last line has no newline
    if kind == PARQUET:
        try:
            with filesystem.open_input_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                columns, rows = tuple(parquet.schema_arrow.names), parquet.metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise CatalogueError(f"{name}: not a readable Parquet file: {_one_line(exc)}") from exc
    else:
        columns = _csv_header(filesystem, path, name)
        rows = None if path.lower().endswith(".gz") else max(0, lines - 1)
    return InputFile(index, path, name, kind, size, digest.hexdigest(), rows, columns)


def _csv_header(filesystem: pa_fs.FileSystem, path: str, name: str) -> tuple[str, ...]:
    with filesystem.open_input_stream(path) as stream:
        text = io.TextIOWrapper(
            io.BufferedReader(_Raw(stream)), encoding="utf-8", errors="replace", newline=""
        )
        header = next(csv.reader(text), None)
    if not header:
        raise CatalogueError(f"{name}: empty file (no header line)")
    return tuple(header)


class _Raw(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream (for the csv module)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def check_columns(catalogue: Catalogue, id_columns: Sequence[str]) -> None:
    """Every file has the seven features and the id columns.

    Raises:
        CatalogueError: naming the file and the first column missing.
    """
    for each in catalogue.files:
        missing = [name for name in (*FEATURE_NAMES, *id_columns) if name not in each.columns]
        if missing:
            raise CatalogueError(
                f"{each.name}: column '{missing[0]}' is missing (header: {', '.join(each.columns)})"
            )


def id_types(catalogue: Catalogue, id_columns: Sequence[str]) -> dict[str, pa.DataType]:
    """The type each id column has in the output: the first file's (text from a CSV file)."""
    first = catalogue.files[0]
    if first.kind == CSV:
        return {name: pa.string() for name in id_columns}
    with catalogue.filesystem.open_input_file(first.path) as handle:
        schema = pq.ParquetFile(handle).schema_arrow
    return {name: schema.field(name).type for name in id_columns}


# --- chunks -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """``chunk_rows`` rows of one file (fewer at its end): the id columns, then the seven features."""

    key: ChunkKey
    first_row: int  # the 1-based row number of its first row in its file
    batch: pa.RecordBatch


def iter_chunks(catalogue: Catalogue, chunk_rows: int, ids: Mapping[str, pa.DataType]) -> Iterator[Chunk]:
    """Every file's rows, in chunks of exactly ``chunk_rows`` rows per file (the last one shorter).

    Raises:
        CatalogueError: a malformed file, naming it, the column and the row.
    """
    columns = [*ids, *FEATURE_NAMES]
    for each in catalogue.files:
        batches = (
            _csv_batches(catalogue, each, columns)
            if each.kind == CSV
            else _parquet_batches(catalogue, each, columns)
        )
        for index, (first, batch) in enumerate(_rechunk(batches, chunk_rows)):
            yield Chunk(ChunkKey(each.index, index), first + 1, _with_id_types(batch, ids, each.name))


def _rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The stream cut into batches of exactly ``rows`` rows (the last shorter), with their offsets."""
    pending: list[pa.RecordBatch] = []
    held = 0
    offset = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield offset, table.slice(0, rows).combine_chunks().to_batches()[0]
            offset += rows
            rest = table.slice(rows)
            pending = rest.combine_chunks().to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        yield offset, pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _csv_batches(catalogue: Catalogue, each: InputFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    with catalogue.filesystem.open_input_stream(each.path) as stream:
        try:
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=columns,
                    column_types=dict.fromkeys(columns, pa.string()),
                    strings_can_be_null=True,
                ),
            )
            yield from reader
        except pa.ArrowInvalid as exc:
            raise CatalogueError(_malformed_csv(catalogue, each, exc)) from None


def _malformed_csv(catalogue: Catalogue, each: InputFile, error: pa.ArrowInvalid) -> str:
    """One line naming the file, the row and the column of the first row pyarrow could not read.

    The streaming reader says what is wrong but not where: the file is read again with the csv module
    (this happens only on the way to stopping).
    """
    message = _one_line(error)
    with catalogue.filesystem.open_input_stream(each.path) as stream:
        text = io.TextIOWrapper(
            io.BufferedReader(_Raw(stream)), encoding="utf-8", errors="replace", newline=""
        )
        reader = csv.reader(text)
        header = next(reader, [])
        for number, fields in enumerate(reader, start=1):
            if len(fields) != len(header) and fields:
                if len(fields) < len(header):
                    where = f"column '{header[len(fields)]}' is missing"
                else:
                    where = f"a field after the last column '{header[-1]}'"
                return (
                    f"{each.name}: row {number}: {len(fields)} fields where the header has {len(header)} "
                    f"({where})"
                )
    return f"{each.name}: not a readable CSV file: {message}"


def _parquet_batches(catalogue: Catalogue, each: InputFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    with catalogue.filesystem.open_input_file(each.path) as handle:
        parquet = pq.ParquetFile(handle)
        for name in FEATURE_NAMES:
            kind = parquet.schema_arrow.field(name).type
            if not _readable_as_numbers(kind):
                raise CatalogueError(f"{each.name}: column '{name}' holds {kind}, not numbers (row 1)")
        try:
            yield from parquet.iter_batches(batch_size=PARQUET_BATCH, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise CatalogueError(f"{each.name}: not a readable Parquet file: {_one_line(exc)}") from None


def _readable_as_numbers(kind: pa.DataType) -> bool:
    """Numbers, text (read like a CSV cell) or an all-null column."""
    types = pa.types
    return bool(
        types.is_integer(kind)
        or types.is_floating(kind)
        or types.is_decimal(kind)
        or types.is_string(kind)
        or types.is_large_string(kind)
        or types.is_null(kind)
    )


def _with_id_types(batch: pa.RecordBatch, ids: Mapping[str, pa.DataType], name: str) -> pa.RecordBatch:
    """The batch with its id columns in the output's types (a folder may mix CSV and Parquet files)."""
    if all(batch.schema.field(column).type == kind for column, kind in ids.items()):
        return batch
    arrays = []
    for column in batch.schema.names:
        array = batch.column(column)
        if column in ids and array.type != ids[column]:
            try:
                array = pc.cast(array, ids[column])
            except pa.ArrowInvalid as exc:
                raise CatalogueError(
                    f"{name}: column '{column}' cannot be read as {ids[column]} like the first file's: "
                    f"{_one_line(exc)}"
                ) from None
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def feature_values(batch: pa.RecordBatch) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The seven features of a chunk as floats (NaN where there is none), and per feature the rows whose
    text is not a number."""
    values: dict[str, np.ndarray] = {}
    not_numbers: dict[str, np.ndarray] = {}
    for name in FEATURE_NAMES:
        values[name], not_numbers[name] = _floats(batch.column(name))
    return values, not_numbers


def _floats(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    rows = len(array)
    if pa.types.is_null(array.type):
        return np.full(rows, np.nan), np.zeros(rows, dtype=bool)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        try:
            numbers = pc.cast(array, pa.float64())
            not_number = np.zeros(rows, dtype=bool)
        except pa.ArrowInvalid:  # text that is not a number somewhere in the chunk: find which rows
            trimmed = pc.utf8_trim_whitespace(array)
            readable = pc.match_substring_regex(trimmed, NUMBER, ignore_case=True)
            numbers = pc.cast(pc.if_else(readable, trimmed, None), pa.float64())
            not_number = pc.fill_null(pc.invert(readable), False).to_numpy(zero_copy_only=False)
    else:
        numbers = pc.cast(array, pa.float64())
        not_number = np.zeros(rows, dtype=bool)
    return numbers.to_numpy(zero_copy_only=False).astype(np.float64, copy=False), not_number


# --- the output folder --------------------------------------------------------------------------------
def partial_path(out: Path) -> Path:
    """Where a run writes before its output appears at ``out``."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


def scores_table(
    chunk: Chunk,
    answer: ChunkAnswer,
    ids: Sequence[str],
    file_name: str | None,
    model: tuple[str, str, float],
) -> pa.Table:
    """The answered rows of a chunk: row number, [file], id columns, probability, label, model, threshold."""
    valid = pa.array(answer.valid)
    rows = answer.scored
    name, version, threshold = model
    columns: dict[str, Any] = {ROW: _row_numbers(chunk)[answer.valid]}
    if file_name is not None:
        columns[FILE] = pa.repeat(pa.scalar(file_name), rows)
    for column in ids:
        columns[column] = chunk.batch.column(column).filter(valid)
    columns[PROBABILITY] = pa.array(answer.probability, type=pa.float64())
    columns[LABEL] = pa.array(answer.label, type=pa.int8())
    columns[MODEL_NAME] = pa.repeat(pa.scalar(name), rows)
    columns[MODEL_VERSION] = pa.repeat(pa.scalar(version), rows)
    columns[THRESHOLD] = pa.repeat(pa.scalar(threshold, type=pa.float64()), rows)
    return pa.table(columns)


def rejects_table(chunk: Chunk, answer: ChunkAnswer, ids: Sequence[str], file_name: str | None) -> pa.Table:
    """The rejected rows of a chunk: row number, [file], id columns, first field, every reason."""
    rejected = ~answer.valid
    mask = pa.array(rejected)
    columns: dict[str, Any] = {ROW: _row_numbers(chunk)[rejected]}
    if file_name is not None:
        columns[FILE] = pa.repeat(pa.scalar(file_name), answer.rejected)
    for column in ids:
        columns[column] = chunk.batch.column(column).filter(mask)
    columns[FIELD] = pa.array(answer.fields, type=pa.string())
    columns[REASON] = pa.array(answer.reasons, type=pa.string())
    return pa.table(columns)


def empty_rejects(file_column: bool, ids: Mapping[str, pa.DataType]) -> pa.Table:
    """A rejects table with no rows (the rejects file of a run that rejected nothing)."""
    fields = [pa.field(ROW, pa.int64())]
    if file_column:
        fields.append(pa.field(FILE, pa.string()))
    fields += [pa.field(name, kind) for name, kind in ids.items()]
    fields += [pa.field(FIELD, pa.string()), pa.field(REASON, pa.string())]
    return pa.schema(fields).empty_table()


def _row_numbers(chunk: Chunk) -> np.ndarray:
    return np.arange(chunk.first_row, chunk.first_row + chunk.batch.num_rows, dtype=np.int64)


def write_chunk(
    partial: Path, key: ChunkKey, output_format: str, scores: pa.Table, rejects: pa.Table
) -> None:
    """A chunk's part file, and its rejects part when it has rejected rows, each renamed into place."""
    suffix = EXTENSION[output_format]
    _write_table(scores, partial / SCORES_DIR / key.part_name(suffix), output_format)
    if rejects.num_rows:
        _write_table(rejects, partial / REJECTS_DIR / key.part_name(suffix), output_format)


def _write_table(table: pa.Table, path: Path, output_format: str) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    if output_format == PARQUET:
        # Row numbers delta-encoded and zstd: ~12 bytes a row instead of ~22 (the probability is most of it).
        others = [name for name in table.column_names if name != ROW]
        encoding = {ROW: "DELTA_BINARY_PACKED"}
        pq.write_table(table, tmp, compression="zstd", use_dictionary=others, column_encoding=encoding)
    else:
        pa_csv.write_csv(table, tmp)
    os.replace(tmp, path)


class Journal:
    """The finished chunks of a partial run, one JSON line each, appended after the chunk's files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[ChunkKey, Counts]:
        """The chunks finished so far (a last line cut short by a crash is dropped)."""
        done: dict[ChunkKey, Counts] = {}
        if not self.path.exists():
            return done
        lines = self.path.read_bytes().split(b"\n")
        complete = b""
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                break  # an unfinished last line: everything after it is unwritten
            if "chunk" in entry:
                done[ChunkKey(entry["file"], entry["chunk"])] = Counts(
                    entry["read"], entry["scored"], entry["rejected"]
                )
            complete += line + b"\n"
        if len(complete) != self.path.stat().st_size:
            self.path.write_bytes(complete)  # so the next line starts on a line of its own
        return done

    def append(self, key: ChunkKey, counts: Counts) -> None:
        """Record a finished chunk (flushed and synced before the next is recorded)."""
        entry = {"file": key.file, "chunk": key.chunk, **vars(counts)}
        self._write(entry)

    def started(self, at: str) -> None:
        """Record an attempt's start."""
        self._write({"started_at": at})

    def attempts(self) -> list[str]:
        """When each attempt started."""
        if not self.path.exists():
            return []
        starts = []
        for line in self.path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if "started_at" in entry:
                    starts.append(str(entry["started_at"]))
        return starts

    def _write(self, entry: Mapping[str, Any]) -> None:
        with self.path.open("ab") as handle:
            handle.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass
class WorkDir:
    """A run's ``OUT.partial`` folder, locked by this process while it runs."""

    out: Path
    partial: Path
    _lock: Any = field(default=None, repr=False)

    @property
    def journal(self) -> Journal:
        """The finished chunks."""
        return Journal(self.partial / JOURNAL)

    def identity(self) -> dict[str, Any] | None:
        """The identity of the run that made this folder (None: no such run yet)."""
        path = self.partial / RUN_FILE
        if not path.exists():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except ValueError:
            return None  # cut short by a crash before any chunk was journaled

    def start(self, identity: Mapping[str, Any]) -> None:
        """Begin a new run here (the folder is emptied first)."""
        for child in (
            (self.partial / name) for name in (SCORES_DIR, REJECTS_DIR, JOURNAL, RUN_FILE, MANIFEST)
        ):
            if child.is_dir():
                shutil.rmtree(child)
            elif child.exists():
                child.unlink()
        (self.partial / SCORES_DIR).mkdir()
        (self.partial / REJECTS_DIR).mkdir()
        write_json(self.partial / RUN_FILE, identity)

    def clean(self) -> None:
        """Drop the half-written files a killed run left (``*.tmp``)."""
        for folder in (self.partial / SCORES_DIR, self.partial / REJECTS_DIR):
            for tmp in folder.glob(f"*{TMP_SUFFIX}"):
                tmp.unlink()

    def discard_if_empty(self) -> None:
        """Remove the partial folder when no chunk was finished in it (a run that stopped at once)."""
        if self.partial.exists() and not self.journal.read():
            shutil.rmtree(self.partial)

    def release(self) -> None:
        """Unlock the folder."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextlib.contextmanager
def locked_work_dir(out: Path) -> Iterator[WorkDir]:
    """The output's partial folder, created when missing and locked by this process for the run.

    Raises:
        CatalogueError: another run holds it.
    """
    partial = partial_path(out)
    partial.mkdir(parents=True, exist_ok=True)
    handle = (partial / LOCK).open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CatalogueError(f"{out}: another scoring run is writing this output now ({partial})") from None
    work = WorkDir(out, partial, handle)
    try:
        yield work
    finally:
        work.release()


def merge_rejects(work: WorkDir, output_format: str, empty: pa.Table) -> int:
    """The chunks' rejects parts as one rejects file, in row order; returns its row count."""
    suffix = EXTENSION[output_format]
    parts = sorted((work.partial / REJECTS_DIR).glob(f"part-*{suffix}"))
    target = work.partial / (REJECTS_FILE + suffix)
    tmp = target.with_name(target.name + TMP_SUFFIX)
    rows = 0
    if output_format == PARQUET:
        with pq.ParquetWriter(tmp, empty.schema) as writer:
            writer.write_table(empty)
            for part in parts:
                table = pq.read_table(part, schema=empty.schema)
                rows += table.num_rows
                writer.write_table(table)
    else:
        pa_csv.write_csv(empty, tmp)
        with tmp.open("ab") as merged:
            for part in parts:
                with part.open("rb") as source:
                    source.readline()  # each part has the header
                    shutil.copyfileobj(source, merged)
                text = pa_csv.ConvertOptions(column_types=dict.fromkeys(empty.schema.names, pa.string()))
                rows += pa_csv.read_csv(part, convert_options=text).num_rows
    os.replace(tmp, target)
    return rows


def rejects_name(output_format: str) -> str:
    """The rejects file's name inside the output folder."""
    return REJECTS_FILE + EXTENSION[output_format]


def publish(work: WorkDir, manifest: Mapping[str, Any]) -> None:
    """Write the manifest, then make the output appear whole: the partial folder renamed to ``OUT``."""
    write_json(work.partial / MANIFEST, manifest)
    _sync_dir(work.partial)
    if work.out.exists():
        raise CatalogueError(
            f"{work.out}: appeared while this run was writing; the scores are in {work.partial}"
        )
    os.rename(work.partial, work.out)
    _sync_dir(work.out.parent)
    tidy(work.out)


def tidy(out: Path) -> None:
    """Remove the run's bookkeeping from a finished output (left there by a crash right after the rename)."""
    for name in (JOURNAL, RUN_FILE, LOCK, SCORER_FILE):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    shutil.rmtree(out / REJECTS_DIR, ignore_errors=True)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A folder's manifest, or None when it has none."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    return dict(json.loads(path.read_text()))


def part_names(folder: Path, output_format: str) -> list[str]:
    """The scores part files of a run folder, in order."""
    return sorted(path.name for path in (folder / SCORES_DIR).glob(f"part-*{EXTENSION[output_format]}"))


def write_bytes(path: Path, data: bytes) -> None:
    """A file written whole (temporary file, then renamed)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """A JSON file written whole (temporary file, synced, renamed)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with tmp.open("w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _sync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]
