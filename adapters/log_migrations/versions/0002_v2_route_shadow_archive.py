"""Log v2: the route that answered, shadow answers, the archive manifest, and the readers' indexes.

- ``predictions.route`` (``champion`` | ``canary``, not null, default ``champion``): rows written before
  this revision were all answered by the champion. Added with its CHECK in one ``ADD COLUMN``, which
  both SQLite and Postgres accept without rebuilding the table.
- ``shadow_predictions``: the challenger's answers to the same requests, keyed by (prediction id,
  version); no foreign key, since shadow rows are written best effort and may land before the
  champion's row leaves the journal.
- ``log_archive_parts``: one row per Parquet file the retention flow wrote (path under the archive
  folder, source table, rows, time range, the cutoff it archived before); ``deleted_at`` is set in the
  same transaction that deletes the file's rows from the live tables, so a file without it is one a
  crash interrupted (the next run finishes it) and readers read only files with it.
- Indexes: the monitor reads one version's champion rows in ``(created_at, id)`` order (replacing the
  version/time index); retention finds rows older than a cutoff by time; feedback by arrival time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the route, the shadow and archive tables, and the indexes."""
    op.execute(
        "ALTER TABLE predictions ADD COLUMN route VARCHAR(16) DEFAULT 'champion' NOT NULL "
        "CONSTRAINT ck_predictions_route CHECK (route IN ('champion', 'canary'))"
    )
    op.drop_index("ix_predictions_version_created", table_name="predictions")
    op.create_index(
        "ix_predictions_version_route_created", "predictions", ["model_version", "route", "created_at", "id"]
    )
    op.create_index("ix_predictions_created", "predictions", ["created_at"])
    op.create_index("ix_feedback_received", "feedback", ["received_at"])
    op.create_table(
        "shadow_predictions",
        sa.Column("prediction_id", sa.String(36), primary_key=True),
        sa.Column("model_version", sa.String(50), primary_key=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("prediction", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_shadow_predictions_created", "shadow_predictions", ["created_at"])
    op.create_table(
        "log_archive_parts",
        sa.Column("part", sa.String(400), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("first_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
