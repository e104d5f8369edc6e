"""Scoring for the gate: the evaluation data, and each registered version's validity, scores and latency.

Plain functions over MLflow and the prediction log; the decision itself is ``reggaeton.promotion.decide``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Final

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.types import DataType

from adapters import prediction_log, registry
from adapters.traffic import read_labelled_traffic
from reggaeton import slices
from reggaeton.data import (
    features_array,
    frame_hash,
    held_out,
    provenance_or_base,
    row_keys,
    synthetic_dataset,
    with_provenance,
)
from reggaeton.promotion import ModelScores, SliceRows
from reggaeton.schema import FEATURE_NAMES, OBSERVED_AT, SOURCE, TARGET, validate_frame
from reggaeton.schema import TRAFFIC as TRAFFIC_SOURCE
from reggaeton.scorer import Scorer
from reggaeton.servable import NotServableError, exception_text, servable_scorer, threshold_from_tags
from reggaeton.settings import PromotionSettings, Settings

logger = logging.getLogger(__name__)

LATENCY_ROWS: Final = 100  # one-row calls timed per model
# The fresh synthetic sample the base data's slices are also scored on: a seed of its own, so it shares
# no song with any training sample (those are drawn with ``data.seed``).
FRESH_SEED_OFFSET: Final = 1_000_003
# Re-exported for the readers of the evaluation frame (the names live in ``reggaeton.slices``).
ORIGIN, HOLDOUT, TRAFFIC, FRESH = slices.ORIGIN, slices.HOLDOUT, slices.TRAFFIC, slices.FRESH


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


_COLUMNS: Final = (*FEATURE_NAMES, TARGET, SOURCE, OBSERVED_AT)


def _part(rows: pd.DataFrame, origin: str) -> pd.DataFrame:
    frame = provenance_or_base(rows)[list(_COLUMNS)].copy()
    frame[ORIGIN] = origin
    return frame


def evaluation_frame(
    holdout: pd.DataFrame,
    traffic: pd.DataFrame,
    *,
    champion_reference: pd.DataFrame | None = None,
    fresh: pd.DataFrame | None = None,
    held_out: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> pd.DataFrame:
    """The rows both models are scored on, each with its provenance and ``ORIGIN``.

    Args:
        holdout: The challenger's held-out rows (its reference set): ``HOLDOUT``.
        traffic: Labelled traffic it never saw (``created_at``, features, target): ``TRAFFIC``.
        champion_reference: The champion's reference set: its rows the challenger's lack are added as
            ``CHAMPION_HOLDOUT`` (slices only), and every row of it is marked ``CHAMPION_REFERENCE``.
        fresh: A fresh sample of the base data (``FRESH``, slices only).
        held_out: The stable split's rule: the champion's rows it does not hold out are left out, as the
            challenger may have trained on them (a champion split by an older rule).

    A row already in an earlier part (same features) is not added again.

    Raises:
        reggaeton.schema.SchemaError: a row outside the schema, or a single class.
    """
    parts = [_part(holdout, HOLDOUT)]
    champion = pd.DataFrame(columns=list(_COLUMNS))
    if champion_reference is not None and not champion_reference.empty:
        champion = champion_reference
        kept = champion if held_out is None else champion.loc[held_out(champion)]
        parts.append(_part(kept, slices.CHAMPION_HOLDOUT))
    if not traffic.empty:
        observed = traffic.assign(**{OBSERVED_AT: traffic[prediction_log.CREATED_AT]})
        parts.append(_part(with_provenance(observed, TRAFFIC_SOURCE, observed[OBSERVED_AT]), TRAFFIC))
    if fresh is not None and not fresh.empty:
        parts.append(_part(fresh, FRESH))
    seen: set[int] = set()
    kept_parts = []
    for part in parts:
        keys = row_keys(part, "evaluation")
        new = ~np.isin(keys, np.fromiter(seen, dtype=np.uint64, count=len(seen)))
        seen.update(int(key) for key in keys)
        kept_parts.append(part.loc[new])
    frame = pd.concat(kept_parts, ignore_index=True)
    checked = validate_frame(frame, "evaluation data", require_target=True)
    for column in (SOURCE, OBSERVED_AT, ORIGIN):
        checked[column] = frame[column]
    reference_keys = row_keys(champion, "evaluation") if len(champion) else np.empty(0, dtype=np.uint64)
    checked[slices.CHAMPION_REFERENCE] = np.isin(row_keys(frame, "evaluation"), reference_keys).astype(
        "int64"
    )
    return checked


def evaluation_hash(frame: pd.DataFrame) -> str:
    """Content hash of the rows both models are scored on, with where each comes from."""
    columns = [*FEATURE_NAMES, TARGET]
    columns += [c for c in (SOURCE, ORIGIN, slices.CHAMPION_REFERENCE) if c in frame.columns]
    return frame_hash(frame[columns].astype({c: "string" for c in (SOURCE, ORIGIN) if c in frame.columns}))


def overall_rows(frame: pd.DataFrame) -> np.ndarray:
    """Which evaluation rows the overall rule judges: the challenger's held-out rows and unseen traffic."""
    return frame[ORIGIN].isin(slices.OVERALL_ORIGINS).to_numpy(dtype=bool)


def slice_rows(frame: pd.DataFrame, policy: PromotionSettings) -> list[SliceRows]:
    """The declared slices and which evaluation rows each holds."""
    return [
        SliceRows(
            name=spec.name,
            rule=spec.rule,
            rows=slices.matching_rows(frame, spec.where, spec.window_days),
            min_positives=spec.min_positives,
            allowed_regression=spec.allowed_regression,
        )
        for spec in policy.slices
    ]


def fresh_sample(settings: Settings) -> pd.DataFrame | None:
    """A fresh sample of the synthetic base data for the slices (None with a folder, or when off)."""
    rows = settings.promotion.fresh_rows
    if settings.data.folder is not None or rows <= 0:
        return None
    return synthetic_dataset(rows, settings.data.seed + FRESH_SEED_OFFSET).frame


def _reference(client: mlflow.MlflowClient, version: ModelVersion | None) -> pd.DataFrame | None:
    """A version's reference set, or None when it has none that can be read (a hand-registered one)."""
    if version is None:
        return None
    try:
        return registry.load_reference(client, version)
    except Exception as exc:  # the champion's rows are extra evidence; without them the gate still decides
        logger.warning(
            "version %s: no readable reference set (%s); its slice has no rows", version.version, exc
        )
        return None


def load_evaluation(
    settings: Settings,
    client: mlflow.MlflowClient,
    challenger: ModelVersion,
    holdout: pd.DataFrame | None,
    champion: ModelVersion | None = None,
) -> pd.DataFrame:
    """The gate's evaluation rows for a challenger (see ``evaluation_frame``).

    Args:
        settings: Where the prediction log is, the split, the fresh sample's size.
        client: MLflow client.
        challenger: The registered version under test.
        holdout: Its held-out rows; None reads them from the version's reference set.
        champion: The champion, whose held-out rows its slice is judged on (None: no champion).
    """
    if holdout is None:
        holdout = registry.load_reference(client, challenger)
    traffic = read_labelled_traffic(settings)
    trained_until = None
    if settings.data.include_feedback and challenger.run_id:
        start_ms = client.get_run(challenger.run_id).info.start_time
        trained_until = pd.Timestamp(start_ms, unit="ms", tz="UTC").to_pydatetime()
    traffic = unseen_traffic(traffic, trained_until)
    data = settings.data
    frame = evaluation_frame(
        holdout,
        traffic,
        champion_reference=_reference(client, champion),
        fresh=fresh_sample(settings),
        held_out=partial(held_out, fraction=data.holdout_fraction, seed=data.seed),
    )
    counts = frame[ORIGIN].value_counts().to_dict()
    logger.info("evaluation data by origin: %s (overall rule: %s)", counts, ", ".join(slices.OVERALL_ORIGINS))
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
        return None, [f"failed to load: {exception_text(exc)}"]
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
        return replace(scores, problems=(f"cannot predict the evaluation data: {exception_text(exc)}",))
    if not np.all(np.isfinite(proba)):
        return replace(scores, problems=("non-finite probabilities on the evaluation data",))
    return replace(scores, proba=proba, latency_ms=latency_ms(scorer, X))
