"""Recording true labels for earlier predictions in the ``feedback`` table (blocking; run in a thread)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from adapters.prediction_log import PREDICTION_ID, archived_before, feedback, predictions
from reggaeton.ids import issued_at


class UnknownPredictionError(LookupError):
    """No prediction with this id was logged."""


class ArchivedPredictionError(LookupError):
    """The prediction was logged, then archived by the retention flow: labels are no longer recorded."""

    def __init__(self, prediction_id: str, cutoff: datetime) -> None:
        self.cutoff = cutoff
        super().__init__(
            f"prediction {prediction_id} was archived: predictions logged before {cutoff.isoformat()} "
            "left the live log (retention), so their labels are no longer recorded"
        )


class ConflictingFeedbackError(ValueError):
    """A different label was already recorded for this prediction."""

    def __init__(self, prediction_id: str, recorded: int) -> None:
        self.recorded = recorded
        super().__init__(f"prediction {prediction_id} already has label {recorded}")


def record_feedback(engine: Engine, prediction_id: str, label: int) -> bool:
    """Store the true label of a prediction; repeating the same label is a no-op.

    Returns:
        True when this call stored the label, False when the same label was already there.

    Raises:
        UnknownPredictionError: no such prediction.
        ArchivedPredictionError: the prediction was archived (its id is older than the archive's cutoff).
        ConflictingFeedbackError: another label was recorded before.
    """
    for _ in range(2):  # a concurrent identical call may win the insert; then re-read
        with engine.begin() as connection:
            known = connection.execute(
                select(predictions.c[PREDICTION_ID]).where(predictions.c[PREDICTION_ID] == prediction_id)
            ).first()
            if known is None:
                issued = issued_at(prediction_id)
                cutoff = None if issued is None else archived_before(connection)
                if issued is not None and cutoff is not None and issued < cutoff:
                    raise ArchivedPredictionError(prediction_id, cutoff)
                raise UnknownPredictionError(prediction_id)
            recorded = connection.execute(
                select(feedback.c.label).where(feedback.c.prediction_id == prediction_id)
            ).scalar_one_or_none()
            if recorded is not None:
                if recorded != label:
                    raise ConflictingFeedbackError(prediction_id, recorded)
                return False
            try:
                connection.execute(
                    feedback.insert().values(
                        prediction_id=prediction_id, label=label, received_at=datetime.now(UTC)
                    )
                )
            except IntegrityError:
                continue
            return True
    raise ConflictingFeedbackError(prediction_id, -1)
