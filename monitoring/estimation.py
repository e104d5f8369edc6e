"""NannyML adapter: CBPE performance estimation, univariate and multivariate drift, realized performance.

``reference`` is the champion's reference set (features, probability, prediction, true label);
``analysis`` is the logged traffic of one window (features, probability, prediction, and a label
column that is NaN where no feedback arrived). The result is one row per analysis chunk (``ChunkResult``).

Chunking: the reference is always chunked by size, into ``reference_chunks`` pieces, so NannyML's
thresholds come from several reference chunks (a reference smaller than one chunk gives degenerate
thresholds); the analysis is chunked as configured (by size or by period), with the chunk size grown
so that one run never has more than ``max_chunks`` chunks (NannyML's cost is mostly per chunk).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from adapters.prediction_log import CREATED_AT, LABEL, PREDICTION_ID
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY, TARGET

logger = logging.getLogger(__name__)

ESTIMATED_METRICS: tuple[str, ...] = ("roc_auc", "f1")
UNIVARIATE_METHODS: tuple[str, ...] = ("kolmogorov_smirnov", "jensen_shannon")
MULTIVARIATE = "reconstruction_error"
# Kolmogorov-Smirnov on a binned reference CDF instead of scipy's exact two-sample test: NannyML only
# uses the statistic, and the exact test's p-value made KS 75 % of the monitor's compute (7 s of 9 s
# on 1 M rows). 10,000 bins over a reference of a few thousand rows moves the statistic by < 0.001
# against thresholds near 0.06. NannyML 0.13 reads the method's options from the top level of
# `computation_params` but only when the method's name is also a key, hence both.
KS_COMPUTATION: dict[str, Any] = {
    "kolmogorov_smirnov": {"calculation_method": "estimated", "n_bins": 10_000},
    "calculation_method": "estimated",
    "n_bins": 10_000,
}


@dataclass(frozen=True)
class Estimate:
    """A CBPE estimate with its confidence bounds."""

    value: float
    lower: float
    upper: float


@dataclass(frozen=True)
class ChunkResult:
    """Everything monitoring knows about one chunk of traffic."""

    index: int
    start: datetime | None
    end: datetime | None
    rows: int
    labelled: int = 0
    labelled_positives: int = 0
    estimated: dict[str, Estimate] = field(default_factory=dict)
    realized: dict[str, float] = field(default_factory=dict)
    drifted_features: tuple[str, ...] = ()
    reconstruction_error: float | None = None
    reconstruction_threshold: float | None = None
    multivariate_drift: bool = False
    # The chunk's first and last log rows (with start/end): late labels are matched to it later.
    first_id: str | None = None
    last_id: str | None = None


@dataclass(frozen=True)
class ChunkPlan:
    """How one run chunks the reference and the analysis."""

    reference_chunk_size: int
    chunk_size: int | None  # None when chunking by period
    chunk_period: str | None = None


def plan_chunks(
    analysis_rows: int,
    reference_rows: int,
    *,
    chunk_size: int | None,
    chunk_period: str | None,
    reference_chunks: int,
    max_chunks: int,
) -> ChunkPlan:
    """Chunk sizes for one run (see the module docstring)."""
    configured = chunk_size or 0
    reference_chunk = max(1, reference_rows // reference_chunks)
    if configured:
        reference_chunk = min(reference_chunk, configured)
    if chunk_period and not chunk_size:
        return ChunkPlan(reference_chunk_size=reference_chunk, chunk_size=None, chunk_period=chunk_period)
    if not configured:
        raise ValueError("set monitoring.chunk_size or monitoring.chunk_period")
    size = max(configured, math.ceil(analysis_rows / max_chunks)) if analysis_rows else configured
    return ChunkPlan(reference_chunk_size=reference_chunk, chunk_size=size)


def _analysis_chunker(plan: ChunkPlan) -> Any:
    from nannyml.chunk import PeriodBasedChunker, SizeBasedChunker

    if plan.chunk_size is None:
        return PeriodBasedChunker(offset=plan.chunk_period, timestamp_column_name=CREATED_AT)
    # Incomplete tails are not analysed: the caller keeps them for the next run.
    return SizeBasedChunker(plan.chunk_size, incomplete="drop")


def _fit_then_chunk(calculator: Any, reference: pd.DataFrame, plan: ChunkPlan) -> Any:
    """Fit on reference chunks sized to the reference, then switch to the analysis chunker."""
    calculator.fit(reference)
    calculator.chunker = _analysis_chunker(plan)
    return calculator


def _quietly(func: Any, *args: Any) -> Any:
    # NannyML warns per chunk (e.g. a chunk with one class); those are summarised in the results.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args)


@dataclass(frozen=True)
class NannyMLResults:
    """NannyML's raw per-chunk result frames (analysis period only)."""

    cbpe: pd.DataFrame
    univariate: pd.DataFrame
    multivariate: pd.DataFrame


def run_nannyml(
    reference: pd.DataFrame, analysis: pd.DataFrame, plan: ChunkPlan, *, usage_logging: bool = False
) -> NannyMLResults:
    """Fit CBPE, univariate drift (KS + Jensen-Shannon) and PCA reconstruction drift; run them.

    Args:
        reference: The reference set (``FEATURE_NAMES`` + probability + prediction + target).
        analysis: Traffic with ``FEATURE_NAMES``, probability, prediction and ``created_at``.
        plan: Chunking for this run.
        usage_logging: Allow NannyML's telemetry (off by default: it reads this variable per call).
    """
    if not usage_logging:
        os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"
    import nannyml as nml

    features = list(FEATURE_NAMES)
    reference_chunker = nml.chunk.SizeBasedChunker(plan.reference_chunk_size, incomplete="append")
    cbpe = nml.CBPE(
        metrics=list(ESTIMATED_METRICS),
        y_pred_proba=PROBABILITY,
        y_pred=PREDICTION,
        y_true=TARGET,
        problem_type="classification_binary",
        chunker=reference_chunker,
    )
    univariate = nml.UnivariateDriftCalculator(
        column_names=features,
        continuous_methods=list(UNIVARIATE_METHODS),
        chunker=reference_chunker,
        computation_params=KS_COMPUTATION,
    )
    multivariate = nml.DataReconstructionDriftCalculator(column_names=features, chunker=reference_chunker)
    # The reference has no timestamps: only the analysis chunker (by period) reads them.
    columns = [*features, PROBABILITY, PREDICTION] + ([CREATED_AT] if plan.chunk_size is None else [])
    frame = analysis[columns]
    cbpe_result = _quietly(_fit_then_chunk(cbpe, reference, plan).estimate, frame)
    univariate_result = _quietly(_fit_then_chunk(univariate, reference, plan).calculate, frame)
    multivariate_result = _quietly(_fit_then_chunk(multivariate, reference, plan).calculate, frame)
    return NannyMLResults(
        cbpe=cbpe_result.filter(period="analysis").data,
        univariate=univariate_result.filter(period="analysis").data,
        multivariate=multivariate_result.filter(period="analysis").data,
    )


def _binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC by the rank-sum formula (ties get average ranks); y holds both classes."""
    ranks = pd.Series(score).rank(method="average").to_numpy()
    positives = int(y.sum())
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def realized_metrics(labels: np.ndarray, proba: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Realized ROC-AUC and F1 on the labelled rows (NaN label = unknown); empty without both classes."""
    known = ~np.isnan(labels)
    y = labels[known].astype(np.int64)
    if y.size == 0 or y.min() == y.max():
        return {}
    pred = predicted[known]
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"roc_auc": _binary_auc(y, proba[known]), "f1": float(f1)}


def _timestamp(value: Any) -> datetime | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return None
    return pd.Timestamp(value).to_pydatetime()


def chunk_results(analysis: pd.DataFrame, raw: NannyMLResults) -> list[ChunkResult]:
    """Join NannyML's frames into one ``ChunkResult`` per chunk, adding realized performance."""
    labels = analysis[LABEL].to_numpy(dtype=np.float64)
    proba = analysis[PROBABILITY].to_numpy(dtype=np.float64)
    predicted = analysis[PREDICTION].to_numpy(dtype=np.int64)
    created = analysis[CREATED_AT]
    ids = analysis[PREDICTION_ID] if PREDICTION_ID in analysis.columns else None
    cbpe, uni, multi = raw.cbpe, raw.univariate, raw.multivariate
    results = []
    for i in range(len(cbpe)):
        start, end = int(cbpe[("chunk", "start_index")].iloc[i]), int(cbpe[("chunk", "end_index")].iloc[i])
        chunk_labels = labels[start : end + 1]
        known = ~np.isnan(chunk_labels)
        estimated = {
            metric: Estimate(
                value=float(cbpe[(metric, "value")].iloc[i]),
                lower=float(cbpe[(metric, "lower_confidence_boundary")].iloc[i]),
                upper=float(cbpe[(metric, "upper_confidence_boundary")].iloc[i]),
            )
            for metric in ESTIMATED_METRICS
        }
        drifted = tuple(
            name
            for name in FEATURE_NAMES
            if any(bool(uni[(name, method, "alert")].iloc[i]) for method in UNIVARIATE_METHODS)
        )
        threshold = multi[(MULTIVARIATE, "upper_threshold")].iloc[i]
        results.append(
            ChunkResult(
                index=i,
                start=_timestamp(created.iloc[start]),
                end=_timestamp(created.iloc[end]),
                rows=end - start + 1,
                labelled=int(known.sum()),
                labelled_positives=int(np.nansum(chunk_labels)),
                estimated=estimated,
                realized=realized_metrics(chunk_labels, proba[start : end + 1], predicted[start : end + 1]),
                drifted_features=drifted,
                reconstruction_error=float(multi[(MULTIVARIATE, "value")].iloc[i]),
                reconstruction_threshold=None if pd.isna(threshold) else float(threshold),
                multivariate_drift=bool(multi[(MULTIVARIATE, "alert")].iloc[i]),
                first_id=None if ids is None else str(ids.iloc[start]),
                last_id=None if ids is None else str(ids.iloc[end]),
            )
        )
    return results


def analysed_rows(chunks: Sequence[ChunkResult]) -> int:
    """How many leading rows of the analysis frame the chunks covered (the rest waits for next run)."""
    return sum(chunk.rows for chunk in chunks)


def estimate(
    reference: pd.DataFrame, analysis: pd.DataFrame, plan: ChunkPlan, *, usage_logging: bool = False
) -> list[ChunkResult]:
    """Run NannyML on one window and return one result per complete chunk (none if too few rows)."""
    if plan.chunk_size is not None and len(analysis) < plan.chunk_size:
        return []
    if analysis.empty:
        return []
    return chunk_results(analysis, run_nannyml(reference, analysis, plan, usage_logging=usage_logging))
