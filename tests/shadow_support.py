"""The prediction log's shadow answers as the tests read them: one per row, with their batch's time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from adapters import prediction_log


def logged_shadow_answers(bind: Engine | Connection) -> list[dict[str, Any]]:
    """Every live shadow answer (``prediction_log.shadow_answers``' columns) and its batch's ``created_at``
    (UTC: SQLite returns naive datetimes), in no particular order."""
    answers = prediction_log.shadow_answers(bind.dialect.name)
    batches = prediction_log.shadow_batches
    batch = answers.c[prediction_log.SHADOW_BATCH]
    query = select(answers, batches.c.created_at).join(batches, batches.c.id == batch)
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            rows = connection.execute(query).mappings().all()
    else:
        rows = bind.execute(query).mappings().all()
    return [{**row, "created_at": _utc(row["created_at"])} for row in rows]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
