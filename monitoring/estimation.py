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

import hashlib
import logging
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from adapters.log_window import LABEL, Watermark
from adapters.prediction_log import CREATED_AT, PREDICTION_ID
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


@dataclass(frozen=True)
class Monitors:
    """CBPE, univariate drift (KS + Jensen-Shannon) and PCA reconstruction drift, fitted on a reference.

    Everything NannyML computes per analysis chunk compares that chunk with what was fitted on the
    reference (calibrator, reference distributions and thresholds, PCA), so successive slices of a
    window cut at chunk boundaries get the same per-chunk results as the whole window in one frame.
    """

    cbpe: Any
    univariate: Any
    multivariate: Any


# Bump when the calculators' configuration below changes: it invalidates the cached fits.
_MONITORS_RECIPE: Final = 1


def _cbpe(chunker: Any) -> Any:
    """NannyML's CBPE of ``ESTIMATED_METRICS`` on the log's probability and prediction columns."""
    import nannyml as nml

    return nml.CBPE(
        metrics=list(ESTIMATED_METRICS),
        y_pred_proba=PROBABILITY,
        y_pred=PREDICTION,
        y_true=TARGET,
        problem_type="classification_binary",
        chunker=chunker,
    )


def _unfitted(plan: ChunkPlan) -> Monitors:
    import nannyml as nml

    features = list(FEATURE_NAMES)
    reference_chunker = nml.chunk.SizeBasedChunker(plan.reference_chunk_size, incomplete="append")
    cbpe = _cbpe(reference_chunker)
    univariate = nml.UnivariateDriftCalculator(
        column_names=features,
        continuous_methods=list(UNIVARIATE_METHODS),
        chunker=reference_chunker,
        computation_params=KS_COMPUTATION,
    )
    multivariate = nml.DataReconstructionDriftCalculator(column_names=features, chunker=reference_chunker)
    return Monitors(cbpe, univariate, multivariate)


def _cache_key(reference: pd.DataFrame, plan: ChunkPlan) -> str:
    """What a fit depends on: the reference's content, its chunk size, NannyML and the recipe."""
    import nannyml

    digest = hashlib.sha256(pd.util.hash_pandas_object(reference, index=True).to_numpy().tobytes())
    digest.update(f"{list(reference.columns)}|{plan.reference_chunk_size}|{nannyml.__version__}".encode())
    digest.update(str(_MONITORS_RECIPE).encode())
    return digest.hexdigest()[:32]


def fit_monitors(
    reference: pd.DataFrame,
    plan: ChunkPlan,
    *,
    cache_dir: Path | None = None,
    usage_logging: bool = False,
) -> Monitors:
    """The calculators fitted on reference chunks sized to the reference, set to chunk the analysis.

    With ``cache_dir``, a fit is computed once per reference (a champion's) and read back by later runs
    (a pickle this process wrote; 2 ms instead of ~0.3 s); an unreadable one is fitted again.
    """
    if not usage_logging:
        os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"
    path = None if cache_dir is None else cache_dir / f"monitors-{_cache_key(reference, plan)}.pkl"
    monitors = None
    if path is not None and path.is_file():
        try:
            monitors = pickle.loads(path.read_bytes())
        except Exception:  # a file from another version of a library, cut short: fit again
            logger.warning("cached monitors %s unreadable; fitting again", path, exc_info=True)
    if not isinstance(monitors, Monitors):
        monitors = _unfitted(plan)
        for calculator in (monitors.cbpe, monitors.univariate, monitors.multivariate):
            # CBPE adds a column to the frame it fits on: each gets its own copy.
            _quietly(calculator.fit, reference.copy())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(pickle.dumps(monitors))
            partial.replace(path)
    for calculator in (monitors.cbpe, monitors.univariate, monitors.multivariate):
        calculator.chunker = _analysis_chunker(plan)
    return monitors


def run_monitors(monitors: Monitors, analysis: pd.DataFrame, plan: ChunkPlan) -> NannyMLResults:
    """The fitted calculators on one frame of traffic (a whole window, or a slice cut at chunk bounds)."""
    features = list(FEATURE_NAMES)
    # The reference has no timestamps: only the analysis chunker (by period) reads them.
    columns = [*features, PROBABILITY, PREDICTION] + ([CREATED_AT] if plan.chunk_size is None else [])
    frame = analysis[columns]
    cbpe = _quietly(monitors.cbpe.estimate, frame)
    univariate = _quietly(monitors.univariate.calculate, frame)
    multivariate = _quietly(monitors.multivariate.calculate, frame)
    return NannyMLResults(
        cbpe=cbpe.filter(period="analysis").data,
        univariate=univariate.filter(period="analysis").data,
        multivariate=multivariate.filter(period="analysis").data,
    )


def run_nannyml(
    reference: pd.DataFrame, analysis: pd.DataFrame, plan: ChunkPlan, *, usage_logging: bool = False
) -> NannyMLResults:
    """Fit the calculators on the reference and run them on the whole analysis frame at once.

    Args:
        reference: The reference set (``FEATURE_NAMES`` + probability + prediction + target).
        analysis: Traffic with ``FEATURE_NAMES``, probability, prediction and ``created_at``.
        plan: Chunking for this run.
        usage_logging: Allow NannyML's telemetry (off by default: it reads this variable per call).
    """
    return run_monitors(fit_monitors(reference, plan, usage_logging=usage_logging), analysis, plan)


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


def chunk_results(analysis: pd.DataFrame, raw: NannyMLResults, first_index: int = 0) -> list[ChunkResult]:
    """Join NannyML's frames into one ``ChunkResult`` per chunk, adding realized performance.

    ``first_index`` numbers the chunks of a slice after those of the slices before it.
    """
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
                index=first_index + i,
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


def estimate_whole(
    reference: pd.DataFrame,
    proba: np.ndarray,
    predicted: np.ndarray,
    *,
    reference_chunks: int = 5,
    usage_logging: bool = False,
) -> dict[str, Estimate]:
    """CBPE's estimate of each of ``ESTIMATED_METRICS`` on all the given answers as one chunk.

    For the live gate's label-free comparison: each model's answers on the same live requests, each
    against its own reference set (CBPE assumes the model calibrated on it). Empty when there are fewer
    answers than one reference chunk (too few to estimate anything).
    """
    import nannyml as nml

    if not usage_logging:
        os.environ["NML_DISABLE_USAGE_LOGGING"] = "1"
    chunk = max(1, len(reference) // reference_chunks)
    if len(proba) < chunk:
        return {}
    cbpe = _cbpe(nml.chunk.SizeBasedChunker(chunk, incomplete="append"))
    _quietly(cbpe.fit, reference[[PROBABILITY, PREDICTION, TARGET]].copy())
    cbpe.chunker = nml.chunk.SizeBasedChunker(len(proba), incomplete="append")
    analysis = pd.DataFrame({PROBABILITY: proba, PREDICTION: predicted})
    result = _quietly(cbpe.estimate, analysis).filter(period="analysis").data
    return {
        metric: Estimate(
            value=float(result[(metric, "value")].iloc[0]),
            lower=float(result[(metric, "lower_confidence_boundary")].iloc[0]),
            upper=float(result[(metric, "upper_confidence_boundary")].iloc[0]),
        )
        for metric in ESTIMATED_METRICS
    }


def analysed_rows(chunks: Sequence[ChunkResult]) -> int:
    """How many leading rows of the analysis frame the chunks covered (the rest waits for next run)."""
    return sum(chunk.rows for chunk in chunks)


def estimate(
    reference: pd.DataFrame, analysis: pd.DataFrame, plan: ChunkPlan, *, usage_logging: bool = False
) -> list[ChunkResult]:
    """Run NannyML on one window in one frame; one result per complete chunk (none if too few rows).

    Small windows and tests; a monitor run streams its window through :func:`estimate_stream`.
    """
    if plan.chunk_size is not None and len(analysis) < plan.chunk_size:
        return []
    if analysis.empty:
        return []
    return chunk_results(analysis, run_nannyml(reference, analysis, plan, usage_logging=usage_logging))


# NannyML is called on slices of about this many rows (whole chunks): its cost per call is a few tens
# of milliseconds, its memory a few times the slice.
SLICE_ROWS: Final = 200_000


def _row_key(frame: pd.DataFrame, position: int) -> Watermark:
    row = frame.iloc[position]
    return pd.Timestamp(row[CREATED_AT]).to_pydatetime(), str(row[PREDICTION_ID])


@dataclass
class Stream:
    """What streaming a window found: its chunks, and which rows it read and analysed."""

    chunks: list[ChunkResult] = field(default_factory=list)
    rows_read: int = 0
    rows_analysed: int = 0
    first_at: datetime | None = None  # the first row read
    last_at: datetime | None = None  # the last row read
    watermark: Watermark | None = None  # the last row analysed; None when nothing was

    def read(self, frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """Pass the frames on, counting rows and noting the first and last times."""
        for frame in frames:
            if len(frame):
                self.rows_read += len(frame)
                if self.first_at is None:
                    self.first_at = pd.Timestamp(frame[CREATED_AT].iloc[0]).to_pydatetime()
                self.last_at = pd.Timestamp(frame[CREATED_AT].iloc[-1]).to_pydatetime()
                yield frame


def _slices(
    frames: Iterable[pd.DataFrame],
    slice_rows: int,
    whole: Callable[[pd.DataFrame], int],
    last: Callable[[pd.DataFrame], int],
) -> Iterator[pd.DataFrame]:
    """The frames regrouped into slices of about ``slice_rows`` rows that end where chunks end.

    ``whole(data)`` is how many leading rows of the rows gathered so far form whole chunks (the rest may
    go on in the next frame); ``last(data)`` the same once no frame follows (a size-chunked window's
    incomplete tail is not analysed; a period-chunked window's last period is).
    """
    pending: list[pd.DataFrame] = []
    buffered = 0
    for frame in frames:
        pending.append(frame)
        buffered += len(frame)
        if buffered >= slice_rows:
            data = pd.concat(pending, ignore_index=True)
            cut = whole(data)
            if cut:
                yield data.iloc[:cut].reset_index(drop=True)
            pending, buffered = [data.iloc[cut:]], len(data) - cut
    if buffered:
        data = pd.concat(pending, ignore_index=True)
        cut = last(data)
        if cut:
            yield data.iloc[:cut].reset_index(drop=True)


def _whole_periods(period: str) -> Callable[[pd.DataFrame], int]:
    """Rows before the last period's first row (NannyML's grouping of the timestamps)."""

    def whole(data: pd.DataFrame) -> int:
        with warnings.catch_warnings():  # to_period drops the time zone, as NannyML's chunker does
            warnings.simplefilter("ignore")
            ordinals = pd.to_datetime(data[CREATED_AT]).dt.to_period(period).array.asi8
        return int(np.searchsorted(ordinals, ordinals[-1], side="left"))

    return whole


def estimate_stream(
    reference: pd.DataFrame,
    frames: Iterable[pd.DataFrame],
    plan: ChunkPlan,
    *,
    slice_rows: int = SLICE_ROWS,
    cache_dir: Path | None = None,
    usage_logging: bool = False,
) -> Stream:
    """NannyML on a window read as a stream of frames, slice by slice; equal to :func:`estimate`.

    The calculators are fitted once (or read from ``cache_dir``); each slice holds whole chunks (by size;
    by period, whole periods), so every chunk gets exactly the rows it would get in one frame and the
    per-chunk results are those of the whole window. Memory is bounded by a slice, not the window.
    """
    stream = Stream()
    monitors = None
    rows = stream.read(frames)
    if plan.chunk_size is None:
        slices = _slices(rows, slice_rows, _whole_periods(str(plan.chunk_period)), len)
    else:
        size = plan.chunk_size

        def whole_chunks(data: pd.DataFrame) -> int:
            return len(data) // size * size

        slices = _slices(rows, max(slice_rows, size), whole_chunks, whole_chunks)
    for part in slices:
        if monitors is None:
            monitors = fit_monitors(reference, plan, cache_dir=cache_dir, usage_logging=usage_logging)
        chunks = chunk_results(part, run_monitors(monitors, part, plan), first_index=len(stream.chunks))
        stream.chunks.extend(chunks)
        stream.rows_analysed += analysed_rows(chunks)
        if chunks:
            stream.watermark = _row_key(part, analysed_rows(chunks) - 1)
    return stream
