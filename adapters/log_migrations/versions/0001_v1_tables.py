"""The v1 prediction log, as ``metadata.create_all`` made it before migrations existed.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The columns as they were: a migration is a snapshot, it does not follow later changes to the schema.
_FEATURES = ("danceability", "energy", "speechiness", "acousticness", "valence", "tempo", "loudness")


def upgrade() -> None:
    """``predictions`` (one row per served prediction) and ``feedback`` (a late true label per id)."""
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        *(sa.Column(name, sa.Float, nullable=False) for name in _FEATURES),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("prediction", sa.Integer, nullable=False),
    )
    op.create_index("ix_predictions_version_created", "predictions", ["model_version", "created_at"])
    op.create_table(
        "feedback",
        sa.Column("prediction_id", sa.String(36), sa.ForeignKey("predictions.id"), primary_key=True),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
