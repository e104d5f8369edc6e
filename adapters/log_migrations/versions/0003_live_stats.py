"""Log v3: ``live_stats``, each API replica's counts of a challenger's live answers (issue 27).

One row per replica, role (``shadow`` | ``canary`` | ``champion``), model version and stats interval:
attempts, valid answers, errors by kind (raised, timed out, not a probability), rows shed under load,
and the summed answer (or model call) time. The live gate reads them from every replica at once: the
error rate and the canary's latency against the champion's. Written best effort, like the shadow rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the live stats table and its index (the gate reads one version's rows by time)."""
    op.create_table(
        "live_stats",
        sa.Column("replica", sa.String(200), primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("model_version", sa.String(50), primary_key=True),
        sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("raised", sa.Integer, nullable=False),
        sa.Column("timeouts", sa.Integer, nullable=False),
        sa.Column("invalid", sa.Integer, nullable=False),
        sa.Column("shed", sa.Integer, nullable=False),
        sa.Column("latency_sum_s", sa.Float, nullable=False),
    )
    op.create_index("ix_live_stats_version_end", "live_stats", ["model_version", "window_end"])
