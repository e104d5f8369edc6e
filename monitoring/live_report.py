"""The live gate's plot: champion vs challenger on the same live requests over time, as PNG bytes.

Top: each model's PR-AUC on the labelled live rows so far, as the labels arrived (x: labelled positives,
the live gate's planned looks marked). Bottom: on all answered requests, per time bucket, the share on
which both models agree and each model's positive rate (label-free). House style of ``report.py``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pandas as pd

from adapters.live_log import (
    CHALLENGER_PREDICTION,
    CHALLENGER_PROBA,
    CHAMPION_PREDICTION,
    CHAMPION_PROBA,
    LABEL,
)
from adapters.prediction_log import CREATED_AT
from reggaeton.metrics import SCORE_METRICS

_POINTS: Final = 40  # PR-AUC evaluated at this many label counts at most
_BUCKETS: Final = 30  # time buckets of the agreement panel at most


def _pr_auc_curve(labelled: pd.DataFrame) -> tuple[list[int], list[float], list[float]]:
    """Both models' PR-AUC on the first k labelled rows, at up to ``_POINTS`` values of k."""
    y = labelled[LABEL].to_numpy(dtype=np.int64)
    positives = np.cumsum(y)
    metric = SCORE_METRICS["pr_auc"]
    xs, champion, challenger = [], [], []
    for end in np.unique(np.linspace(1, len(y), min(_POINTS, len(y))).astype(int)):
        head = y[:end]
        if head.sum() in (0, len(head)):
            continue
        xs.append(int(positives[end - 1]))
        champion.append(float(metric(head, labelled[CHAMPION_PROBA].to_numpy()[:end])))
        challenger.append(float(metric(head, labelled[CHALLENGER_PROBA].to_numpy()[:end])))
    return xs, champion, challenger


def live_figure(
    labelled: pd.DataFrame,
    recent: pd.DataFrame,
    champion: str,
    challenger: str,
    looks: Sequence[int],
    title: str,
) -> Any:
    """The figure (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7), layout="constrained")
    performance, agreement = figure.subplots(2, 1)
    xs, champion_pr, challenger_pr = _pr_auc_curve(labelled) if len(labelled) else ([], [], [])
    performance.plot(
        xs, champion_pr, color="tab:blue", marker="o", markersize=3, label=f"champion {champion}"
    )
    performance.plot(
        xs, challenger_pr, color="tab:orange", marker="o", markersize=3, label=f"challenger {challenger}"
    )
    for n in looks:
        performance.axvline(n, color="grey", linestyle="--", linewidth=1)
    if looks:
        performance.plot([], [], color="grey", linestyle="--", linewidth=1, label="planned looks")
    performance.set_xlabel("labelled positives (labels in arrival order)")
    performance.set_ylabel("PR-AUC on live labelled rows")
    performance.set_ylim(0, 1.02)
    performance.legend(loc="lower right", fontsize=8)
    performance.set_title(title)
    if len(recent):
        times = pd.to_datetime(recent[CREATED_AT], utc=True)
        buckets = pd.cut(times.astype("int64"), bins=min(_BUCKETS, max(1, len(recent) // 20)), labels=False)
        grouped = recent.assign(
            _bucket=buckets,
            _agree=(recent[CHAMPION_PREDICTION] == recent[CHALLENGER_PREDICTION]).astype(float),
            _time=times,
        ).groupby("_bucket")
        x = grouped["_time"].min()
        agreement.plot(x, grouped["_agree"].mean(), color="tab:green", label="agreement (same label)")
        agreement.plot(
            x,
            grouped[CHAMPION_PREDICTION].mean(),
            color="tab:blue",
            linestyle=":",
            label="champion positive rate",
        )
        agreement.plot(
            x,
            grouped[CHALLENGER_PREDICTION].mean(),
            color="tab:orange",
            linestyle=":",
            label="challenger positive rate",
        )
        agreement.legend(loc="center left", fontsize=8)
    agreement.set_ylim(0, 1.02)
    agreement.set_ylabel("share of answered requests")
    agreement.set_xlabel("request time (bucket start)")
    return figure


def live_png(
    labelled: pd.DataFrame,
    recent: pd.DataFrame,
    champion: str,
    challenger: str,
    looks: Sequence[int],
    title: str,
) -> bytes:
    """The figure as PNG bytes (for the Prefect artifact and the run's files)."""
    figure = live_figure(labelled, recent, champion, challenger, looks, title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
