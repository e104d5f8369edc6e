"""The prediction log's journal: append-only segment files on local disk, one JSON line per model batch.

Every answered row is appended here (one ``write()`` per model batch, on the event loop) before its
response is sent. The data then sits in the operating system's page cache: a ``kill -9`` of the
process loses none of it (the kernel still writes it out); only a power loss or kernel crash could,
unless ``spool_fsync`` is set. The writer inserts the rows into the database and removes a segment
once every row in it is committed; what is left at start is replayed (the prediction id is the key,
so replaying a row twice inserts it once).

A record is one line: ``{"t": created_at ISO, "n": model name, "v": version, "r": route, "ids": [...],
"x": [[7 features], ...], "p": [probabilities], "y": [labels]}``; a line without ``"r"`` (written by a
server from before routes) is the champion's. A line cut short by a crash in the
middle of ``write()`` was never answered; replay skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from serving.log_rows import LogEntry, Position, decode, encode

logger = logging.getLogger(__name__)

_LOCK_FILE = "spool.lock"  # flock-ed by the server using the folder; not a segment
_SEGMENT = re.compile(r"^segment-(\d{12})\.jsonl$")
_FIRST_READ = 1 << 20
# Each segment holds at most this share of the bound, so a committed segment is freed long before the
# bound is reached.
_SEGMENTS_PER_BOUND: Final = 4


def segment_name(number: int) -> str:
    """The file name of segment ``number``."""
    return f"segment-{number:012d}.jsonl"


@dataclass(slots=True)
class Chunk:
    """Records read from the journal and where reading stopped."""

    entries: list[LogEntry]
    end: Position
    skipped: int  # bytes of a torn last line dropped (a crash in the middle of a write)


class SpoolLockedError(RuntimeError):
    """Another running server holds this spool folder."""


class Journal:
    """Append-only segment files in one folder, bounded in bytes; appends on the event loop only."""

    def __init__(
        self, directory: Path, *, max_bytes: int, segment_bytes: int, fsync: bool = False, slots: int = 1
    ) -> None:
        self.directory = directory
        self._slots = slots  # > 1: ``directory`` holds one subfolder per replica (see :meth:`open`)
        self.max_bytes = max_bytes
        self._segment_bytes = max(1024, min(segment_bytes, max_bytes // _SEGMENTS_PER_BOUND))
        self._fsync = fsync
        self._sizes: dict[int, int] = {}  # every segment on disk -> its size
        self._current = 0
        self._fd = -1
        self._lock = -1
        self.backlog_end = Position(0, 0)  # segments before this were left by an earlier process

    def open(self) -> Position | None:
        """Open a new segment after those left by an earlier process; returns where those start, if any.

        With ``slots`` > 1 the folder is shared by replicas (one volume for all of them): each claims the
        first of ``replica-0`` .. ``replica-<slots - 1>`` that no live process holds, and replays what an
        earlier holder of that subfolder left.

        Raises:
            SpoolLockedError: another live process uses this folder (each server needs its own), or
                every slot is held.
        """
        candidates = (
            [self.directory]
            if self._slots == 1
            else [self.directory / f"replica-{k}" for k in range(self._slots)]
        )
        for candidate in candidates:
            if self._claim(candidate):
                self.directory = candidate
                break
        else:
            raise SpoolLockedError(
                f"{self.directory} is the spool of another running server (every slot is held)"
            )
        for path in self.directory.iterdir():
            match = _SEGMENT.match(path.name)
            if match:
                self._sizes[int(match.group(1))] = path.stat().st_size
        left = sorted(number for number, size in self._sizes.items() if size > 0)
        for number in [n for n, size in self._sizes.items() if size == 0]:
            self._unlink(number)
        self._current = max(self._sizes, default=0) + 1
        self._open_current()
        self.backlog_end = Position(self._current, 0)
        return Position(left[0], 0) if left else None

    def _claim(self, folder: Path) -> bool:
        """Take the folder's lock (held until :meth:`close` or the process ends); False when held."""
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock = fd
        return True

    @property
    def bytes(self) -> int:
        """Bytes in every segment on disk (rows committed to the database included until freed)."""
        return sum(self._sizes.values())

    @property
    def end(self) -> Position:
        """Where the next record will be appended."""
        return Position(self._current, self._sizes[self._current])

    def full(self) -> bool:
        """Whether the journal holds its bound."""
        return self.bytes >= self.max_bytes

    def append(self, entry: LogEntry) -> Position:
        """Write one model batch (a single ``write``); returns the position just after it.

        Raises:
            OSError: the disk refused the write; the journal is left as it was before the call.
        """
        data = encode(entry)
        if self._fd < 0:
            self._open_current()
        start = self._sizes[self._current]
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(self._fd)
        except OSError:
            # Cut back a partial line so the next record starts on a line of its own.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        end = start + len(data)
        self._sizes[self._current] = end
        if end >= self._segment_bytes:
            self._rotate()
            return Position(self._current, 0)  # the same place: once it is committed, the old segment goes
        return Position(self._current, end)

    def segment_after(self, number: int) -> int | None:
        """The next segment on disk after ``number``, or None."""
        later = [n for n in self._sizes if n > number]
        return min(later) if later else None

    def segment_size(self, number: int) -> int:
        """Bytes in segment ``number`` (0 once freed)."""
        return self._sizes.get(number, 0)

    def read(self, start: Position, limit: int, max_rows: int) -> Chunk:
        """Whole records of one segment from ``start`` up to byte ``limit``, about ``max_rows`` rows.

        Blocking; the writer thread calls it. ``limit`` must be a size the event loop saw (every record
        before it complete) or the size of a segment no longer written to.
        """
        entries: list[LogEntry] = []
        rows = 0
        offset = start.offset
        skipped = 0
        size = _FIRST_READ
        with (self.directory / segment_name(start.segment)).open("rb") as file:
            while offset < limit and rows < max_rows:
                file.seek(offset)
                data = file.read(min(size, limit - offset))
                lines = data.split(b"\n")
                complete = lines[:-1]  # the last piece is empty or an unfinished line
                if not complete:
                    if offset + len(data) >= limit:  # a torn last line: never answered
                        skipped = limit - offset
                        logger.warning("spool segment %s ends with a torn record; skipped", start.segment)
                        offset = limit
                        break
                    size *= 2
                    continue
                for line in complete:
                    offset += len(line) + 1
                    if line:
                        try:
                            entry = decode(line)
                        except (ValueError, KeyError, TypeError):  # orjson's decode error is a ValueError
                            logger.error("spool segment %s: unreadable record skipped", start.segment)
                            skipped += len(line) + 1
                            continue
                        entries.append(entry)
                        rows += len(entry.ids)
                    if rows >= max_rows:
                        break
        return Chunk(entries, Position(start.segment, offset), skipped)

    def free_before(self, position: Position) -> None:
        """Delete the segments wholly before ``position`` (their rows are committed)."""
        for number in [n for n in self._sizes if n < position.segment and n != self._current]:
            self._unlink(number)
        if position.segment != self._current and position.offset >= self._sizes.get(position.segment, -1) > 0:
            self._unlink(position.segment)

    def close(self, committed: Position | None) -> None:
        """Close the current segment; with everything committed up to ``committed``, delete the journal."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if committed is not None and committed >= self.end:
            for number in list(self._sizes):
                self._unlink(number)
        if self._lock >= 0:
            os.close(self._lock)  # releases the flock
            self._lock = -1

    def _open_current(self) -> None:
        path = self.directory / segment_name(self._current)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._sizes[self._current] = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        # The next segment's file is created by the next append: an error then refuses that batch only.
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1
        self._current += 1
        self._sizes[self._current] = 0

    def _unlink(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / segment_name(number)).unlink()
        self._sizes.pop(number, None)
