"""Alembic's environment for the prediction log: runs on the connection ``log_migrations.upgrade`` opened."""

from __future__ import annotations

from alembic import context

from adapters.log_migrations import VERSION_TABLE


def run() -> None:
    """Run the pending migrations in the caller's transaction (never a URL of its own)."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the log's migrations through adapters.log_migrations.upgrade(engine)")
    context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


run()
