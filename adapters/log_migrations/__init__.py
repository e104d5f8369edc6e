"""Alembic migrations of the prediction log: ``upgrade(engine)`` brings any log to the current schema.

No ``alembic.ini``: the configuration is built here and the scripts are found next to this file, so the
API image and the platform image run the same migrations. ``prediction_log.create_tables`` is the entry
point everyone calls; it imports this module only when the log is not already current.

Revisions (``versions/``):
- ``0001``: the v1 tables, exactly as ``metadata.create_all`` made them before migrations existed.
- ``0002``: v2: ``predictions.route``, ``shadow_predictions``, the archive manifest, the indexes the
  monitor's window and the retention queries need.
- ``0003``: ``live_stats``, the API replicas' counts of a challenger's live answers (the live gate's).
- ``0004``: shadow answers a batch per row (``shadow_batches``, JSON arrays), moved from
  ``shadow_predictions``, which goes.

A database made by ``create_all`` before migrations (v1 tables, no version table) is stamped ``0001``
and upgraded in place: its rows stay. Concurrent upgrades (API replicas starting together) are
serialised: a Postgres advisory lock held for the upgrade's transaction, SQLite's write lock
(``BEGIN IMMEDIATE``) for its whole upgrade. The revision table is ``prediction_log_version``, not
Alembic's default, so another store sharing the database (the monitoring results) can migrate too.

A new revision, for people changing the schema: ``python -m adapters.log_migrations revision -m "why"``
writes a script in ``versions/`` to edit, and bump ``prediction_log.SCHEMA_REVISION``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import inspect, text

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection, Engine

VERSION_TABLE: Final = "prediction_log_version"
V1_REVISION: Final = "0001"
SCRIPTS: Final = Path(__file__).resolve().parent
# pg_advisory_xact_lock's key: any fixed 64-bit number, the same in every process ("reggaeton-log").
_LOCK_KEY: Final = 0x7265676761_6C6F67


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the log, optionally bound to an open connection (used by ``env.py``)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision among the scripts."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def _lock(connection: Connection) -> None:
    """Hold the log's migration lock until this connection's transaction ends."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        # The driver starts no transaction before DDL: take the write lock now, so a second process
        # waits here (busy_timeout) and then finds the tables at head.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(engine: Engine) -> None:
    """Bring the log to the newest revision in one transaction (created when empty, rows kept)."""
    from alembic import command

    with engine.begin() as connection:
        _lock(connection)
        tables = set(inspect(connection).get_table_names())
        cfg = config(connection)
        if VERSION_TABLE not in tables and "predictions" in tables:
            command.stamp(cfg, V1_REVISION)  # made by create_all before migrations: it is v1
        command.upgrade(cfg, "head")


def main(argv: list[str] | None = None) -> int:
    """``revision -m MESSAGE``: a new, empty migration script after the current head."""
    from alembic import command

    parser = argparse.ArgumentParser(description="Prediction log migrations")
    parser.add_argument("action", choices=("revision",))
    parser.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    number = f"{int(head()) + 1:04d}"
    command.revision(config(), message=args.message, rev_id=number)
    return 0
