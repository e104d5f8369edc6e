"""Scoring for the gate: the evaluation data, and each registered version's validity, scores and latency.

Plain functions over MLflow and the prediction log; the decision itself is ``reggaeton.promotion.decide``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime
from typing import Final

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.types import DataType

from adapters import prediction_log, registry
from adapters.traffic import read_labelled_traffic
from reggaeton.data import features_array, frame_hash
from reggaeton.promotion import ModelScores
from reggaeton.schema import FEATURE_NAMES, TARGET, validate_frame
from reggaeton.scorer import Scorer
from reggaeton.servable import NotServableError, servable_scorer, threshold_from_tags
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

ORIGIN: Final = "origin"  # which part of the evaluation data a row comes from
HOLDOUT: Final = "holdout"
TRAFFIC: Final = "traffic"
LATENCY_ROWS: Final = 100  # one-row calls timed per model


def unseen_traffic(traffic: pd.DataFrame, trained_until: datetime | None) -> pd.DataFrame:
    """Labelled traffic predicted after ``trained_until`` (None: all of it).

    When training adds labelled traffic to its data, rows labelled before the challenger was trained
    are in its training split or already in its held-out split; scoring them again would favour it.
    A prediction made after training started cannot have been labelled before it. (Rows predicted
    before but labelled after are left out too: a few rows lost, no leak.)
    """
    if trained_until is None or traffic.empty:
        return traffic
    cutoff = pd.Timestamp(trained_until)
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    created = pd.to_datetime(traffic[prediction_log.CREATED_AT], utc=True)  # SQLite returns naive UTC
    return traffic.loc[created > cutoff]


def evaluation_frame(holdout: pd.DataFrame, traffic: pd.DataFrame) -> pd.DataFrame:
    """Held-out rows plus labelled traffic: features, target and an ``origin`` column.

    Raises:
        reggaeton.schema.SchemaError: a row outside the schema, or a single class.
    """
    columns = [*FEATURE_NAMES, TARGET]
    parts = [holdout[columns].assign(**{ORIGIN: HOLDOUT})]
    if not traffic.empty:
        parts.append(traffic[columns].assign(**{ORIGIN: TRAFFIC}))
    frame = pd.concat(parts, ignore_index=True)
    checked = validate_frame(frame, "evaluation data", require_target=True)
    checked[ORIGIN] = frame[ORIGIN].to_numpy()
    return checked


def evaluation_hash(frame: pd.DataFrame) -> str:
    """Content hash of the rows both models are scored on."""
    return frame_hash(frame[[*FEATURE_NAMES, TARGET]])


def load_evaluation(
    settings: Settings, client: mlflow.MlflowClient, challenger: ModelVersion, holdout: pd.DataFrame | None
) -> pd.DataFrame:
    """The gate's evaluation data for a challenger: its held-out rows plus the labelled traffic it never saw.

    Args:
        settings: Where the prediction log is.
        client: MLflow client.
        challenger: The registered version under test.
        holdout: Its held-out rows; None reads them from the version's reference set.
    """
    if holdout is None:
        holdout = registry.load_reference(client, challenger)
    traffic = read_labelled_traffic(settings)
    trained_until = None
    if settings.data.include_feedback and challenger.run_id:
        start_ms = client.get_run(challenger.run_id).info.start_time
        trained_until = pd.Timestamp(start_ms, unit="ms", tz="UTC").to_pydatetime()
    traffic = unseen_traffic(traffic, trained_until)
    frame = evaluation_frame(holdout, traffic)
    logger.info(
        "evaluation data: %d held-out rows, %d labelled traffic rows", len(holdout), len(traffic.index)
    )
    return frame


def signature_problems(model_uri: str) -> list[str]:
    """What is wrong with a logged model's input signature (empty when it is the seven doubles)."""
    signature = mlflow.models.get_model_info(model_uri).signature
    if signature is None:
        return ["no signature"]
    names = [str(name) for name in signature.inputs.input_names()]
    if names != list(FEATURE_NAMES):
        return [f"signature inputs {names} != {list(FEATURE_NAMES)}"]
    wrong = [
        str(spec.name)
        for spec in signature.inputs.inputs
        if getattr(spec, "type", None) not in (DataType.double, DataType.float)
    ]
    return [f"signature inputs not floating point: {', '.join(wrong)}"] if wrong else []


def latency_ms(scorer: Scorer, X: np.ndarray, rows: int = LATENCY_ROWS) -> float:
    """Median wall time of a one-row call of the scorer the server will use, in milliseconds."""
    sample = X[: max(1, min(rows, len(X)))]
    scorer.probabilities(sample[:1])  # warm-up
    timings = np.empty(len(sample))
    for i in range(len(sample)):
        start = time.perf_counter()
        scorer.probabilities(sample[i : i + 1])
        timings[i] = time.perf_counter() - start
    return float(np.median(timings) * 1000)


def load_checked(model_name: str, version: str) -> tuple[Scorer | None, list[str]]:
    """Load a registered version and check it: its signature, then the rule serving applies.

    Returns:
        The scorer the server would use (None when the version is not servable) and the problems
        found (empty: valid).
    """
    try:
        tags = registry.version_tags(model_name, version)
        pipeline = registry.load_pipeline(model_name, version)
        problems = signature_problems(f"models:/{model_name}/{version}")
    except Exception as exc:
        logger.warning("version %s failed to load: %s", version, exc)
        return None, [f"failed to load: {type(exc).__name__}: {exc}"]
    try:
        scorer = servable_scorer(pipeline, threshold_from_tags(tags, version), version)
    except NotServableError as exc:
        return None, problems + list(exc.problems)
    return (None if problems else scorer), problems


def score_version(model_name: str, version: str, frame: pd.DataFrame) -> ModelScores:
    """Load a registered version, check it, and score it on the evaluation frame.

    A version that fails to load, predict or match the signature comes back with ``problems`` and no
    probabilities; that is a verdict for ``decide``, not an error.
    """
    y_true = frame[TARGET].to_numpy(dtype=np.int64)
    scores = ModelScores(version=version, evaluation=evaluation_hash(frame), y_true=y_true)
    scorer, problems = load_checked(model_name, version)
    if scorer is None:
        return replace(scores, problems=tuple(problems))
    X = features_array(frame)
    try:
        proba = np.asarray(scorer.probabilities(X))
    except Exception as exc:
        return replace(scores, problems=(f"cannot predict the evaluation data: {type(exc).__name__}: {exc}",))
    if not np.all(np.isfinite(proba)):
        return replace(scores, problems=("non-finite probabilities on the evaluation data",))
    return replace(scores, proba=proba, latency_ms=latency_ms(scorer, X))
