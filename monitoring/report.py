"""The monitoring plot: estimated vs realized performance and drift over time, as PNG and HTML.

The HTML page is self-contained (inline SVG and a table), so it opens offline and from an MLflow
artifact view without fetching scripts from anywhere.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.estimation import ESTIMATED_METRICS
from monitoring.store import (
    CHUNK_START,
    DRIFTED_FEATURES,
    LABELLED,
    LOWER,
    RECONSTRUCTION_ERROR,
    RECONSTRUCTION_THRESHOLD,
    ROWS,
    UPPER,
    estimated_column,
    realized_column,
)
from monitoring.store import chunks as chunks_table

_MAX_TABLE_ROWS = 200
_METRIC_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:brown")
_TABLE_COLUMNS = (
    CHUNK_START,
    ROWS,
    LABELLED,
    *(name for metric in ESTIMATED_METRICS for name in (estimated_column(metric), realized_column(metric))),
    RECONSTRUCTION_ERROR,
    DRIFTED_FEATURES,
)


@dataclass(frozen=True)
class Report:
    """Where the rendered plot was written."""

    png: Path
    html: Path


def _figure(chunks: pd.DataFrame, thresholds: Mapping[str, float], title: str) -> object:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7), layout="constrained")
    perf, drift = figure.subplots(2, 1, sharex=True)
    # Dates on the axis when every chunk has one; an empty store has none (and matplotlib cannot fill
    # between empty dates).
    x = (
        pd.to_datetime(chunks[CHUNK_START], utc=True)
        if len(chunks) and chunks[CHUNK_START].notna().all()
        else chunks.index
    )
    _performance_panel(perf, x, chunks, thresholds, title)
    _drift_panel(drift, x, chunks)
    return figure


def _performance_panel(
    perf: Any, x: Any, chunks: pd.DataFrame, thresholds: Mapping[str, float], title: str
) -> None:
    """Estimated performance with its confidence band, realized points and thresholds, per metric."""
    for metric, colour in zip(ESTIMATED_METRICS, cycle(_METRIC_COLOURS)):
        estimated = chunks[estimated_column(metric)].astype(float)
        perf.plot(x, estimated, color=colour, label=f"estimated {metric} (CBPE)")
        perf.fill_between(
            x,
            chunks[estimated_column(metric, LOWER)].astype(float),
            chunks[estimated_column(metric, UPPER)].astype(float),
            color=colour,
            alpha=0.15,
        )
        perf.plot(
            x,
            chunks[realized_column(metric)].astype(float),
            linestyle="none",
            marker="o",
            markersize=4,
            color=colour,
            label=f"realized {metric}",
        )
        if metric in thresholds:
            perf.axhline(
                thresholds[metric], color=colour, linestyle="--", linewidth=1, label=f"{metric} threshold"
            )
    perf.set_ylabel("performance")
    perf.set_ylim(0, 1.02)
    perf.legend(loc="lower left", fontsize=8, ncols=3)
    perf.set_title(title)


def _drift_panel(drift: Any, x: Any, chunks: pd.DataFrame) -> None:
    """PCA reconstruction error against its threshold, and the count of drifting features as bars."""
    drift.plot(
        x, chunks[RECONSTRUCTION_ERROR].astype(float), color="tab:red", label="PCA reconstruction error"
    )
    drift.plot(
        x,
        chunks[RECONSTRUCTION_THRESHOLD].astype(float),
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label="its threshold",
    )
    drift.set_ylabel("reconstruction error")
    counts = drift.twinx()
    drifted = chunks[DRIFTED_FEATURES].fillna("").map(lambda s: len(s.split(",")) if s else 0)
    counts.bar(x, drifted, alpha=0.25, color="tab:purple", width=_bar_width(x), label="drifting features")
    counts.set_ylabel("drifting features (KS or JS)")
    counts.set_ylim(0, 7.5)
    lines, labels = drift.get_legend_handles_labels()
    bars, bar_labels = counts.get_legend_handles_labels()
    drift.legend(lines + bars, labels + bar_labels, loc="upper left", fontsize=8)
    drift.set_xlabel("chunk start")


def _bar_width(x: object) -> float:
    if isinstance(x, pd.Series) and len(x) > 1 and pd.api.types.is_datetime64_any_dtype(x):
        spans = x.diff().dropna()
        return max(float(spans.median() / pd.Timedelta(days=1)) * 0.8, 1e-6)
    return 0.8


def _table(chunks: pd.DataFrame) -> str:
    shown = chunks.tail(_MAX_TABLE_ROWS)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _TABLE_COLUMNS)
    body = []
    for _, row in shown.iterrows():
        cells = []
        for column in _TABLE_COLUMNS:
            value = row.get(column)
            text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else value
            text = f"{text:.3f}" if isinstance(text, float) else str(text)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render(
    chunks: pd.DataFrame, thresholds: Mapping[str, float], title: str, folder: Path, stem: str = "monitoring"
) -> Report:
    """Render stored chunks (``store.read_chunks``) to ``<stem>.png`` and ``<stem>.html`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    png, page = folder / f"{stem}.png", folder / f"{stem}.html"
    if chunks.empty:  # `store.read_chunks` found none: no columns either
        chunks = pd.DataFrame(columns=[column.name for column in chunks_table.columns])
    figure = _figure(chunks.reset_index(drop=True), thresholds, title)
    figure.savefig(png, dpi=90)  # type: ignore[attr-defined]
    svg = io.StringIO()
    figure.savefig(svg, format="svg")  # type: ignore[attr-defined]
    svg_text = svg.getvalue()
    svg_text = svg_text[svg_text.find("<svg") :]
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{svg_text}<h2>Chunks (latest {_MAX_TABLE_ROWS})</h2>{_table(chunks)}"
        "</body></html>",
        encoding="utf-8",
    )
    return Report(png=png, html=page)
