"""A SQLite database held by another writer: the real way a SQLite store stops answering writes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def sqlite_locked(database: Path) -> Iterator[None]:
    """An exclusive transaction on ``database`` from another connection, for the block's duration."""
    connection = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        connection.execute("COMMIT")
        connection.close()
