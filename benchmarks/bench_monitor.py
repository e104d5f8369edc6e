"""Benchmark of the monitor run against NannyML's own compute: ``make bench-monitor``.

For each size (default 100 k and 1 M logged predictions, reference 2,000 rows) it fills a SQLite
prediction log and then, each in a fresh process so peak memory is its own:
- the whole monitor run: read the log window, NannyML (CBPE + univariate + PCA drift), realized
  performance, alert policy, results store, plot (PNG + HTML), MLflow metrics and artifacts;
- NannyML alone: the same calculators, fitted on the same reference and run on the same frame the
  monitor read (saved by the setup), with the same chunking.
It prints wall time and peak RSS of both (medians of ``--repeats``), their ratios, and the growth
from the smallest to the largest size. Targets: 1 M rows within 15 s and 1.5 GB, at most 3x NannyML,
growth no worse than linear.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

VERSION = "1"


def _settings(folder: Path, results_url: str | None = None) -> Any:
    from reggaeton.settings import Settings

    # One MLflow store for all sizes (creating its schema is slow); one log per size.
    shared = folder.parent / "mlflow"
    return Settings(
        state_dir=folder / "state",
        monitoring={"settle_s": 0.0, "results_url": results_url},
        mlflow={
            "tracking_uri": f"sqlite:///{shared / 'mlflow.db'}",
            "artifact_root": (shared / "art").as_uri(),
        },
    )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(folder: Path, rows: int) -> None:
    """Fit a champion, write the 2,000-row reference and ``rows`` logged predictions."""
    from adapters import prediction_log, registry
    from monitoring import simulate
    from reggaeton.data import features_array, split, synthetic_dataset
    from reggaeton.metrics import best_f1_threshold
    from reggaeton.model import RANDOM_FOREST, build_pipeline
    from reggaeton.schema import TARGET

    settings = _settings(folder)
    settings.ensure_state_dir()
    (folder.parent / "mlflow").mkdir(exist_ok=True)
    data = split(synthetic_dataset(4000, seed=3), 0.5, seed=3)
    pipeline = build_pipeline(RANDOM_FOREST, {"n_estimators": 50, "min_samples_leaf": 3}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    proba = pipeline.predict_proba(features_array(data.holdout))[:, 1]
    threshold = best_f1_threshold(data.holdout[TARGET].to_numpy(), proba)
    registry.reference_frame(data.holdout, proba, threshold).to_parquet(folder / "reference.parquet")

    engine = prediction_log.make_engine(settings.prediction_log_url)
    prediction_log.create_tables(engine)
    songs = simulate.score(simulate.traffic("stable", rows, seed=5), pipeline, threshold)
    simulate.log_traffic(
        engine,
        songs,
        VERSION,
        start=datetime.now(UTC) - timedelta(days=30),
        interval=timedelta(seconds=1),
        feedback_fraction=0.2,
        seed=5,
    )
    # The exact frame the monitor will read, for NannyML alone.
    prediction_log.read_window(engine, VERSION).to_parquet(folder / "window.parquet")
    engine.dispose()
    client = registry.connect(settings)
    registry.ensure_experiment(client, settings.mlflow.monitoring_experiment, settings)


def child_monitor(folder: Path) -> dict[str, float]:
    """The whole monitor run (fresh results store each time)."""
    import pandas as pd

    from adapters import registry
    from monitoring import pipeline

    settings = _settings(folder, results_url=f"sqlite:///{folder / f'results-{time.time_ns()}.db'}")
    reference = pd.read_parquet(folder / "reference.parquet")
    client = registry.connect(settings)
    experiment_id = registry.ensure_experiment(client, settings.mlflow.monitoring_experiment, settings)
    policy = pipeline.policy_from_settings(settings)
    laps: dict[str, float] = {}
    started = time.perf_counter()
    mark = started

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        laps[name] = now - mark
        mark = now

    with pipeline.open_stores(settings) as stores:
        window = pipeline.read_window(stores.log, stores.results, VERSION, 0.0, datetime.now(UTC))
        lap("read")
        analysis = pipeline.analyse(reference, window, settings)
        lap("analyse")
        history = pipeline.read_history(stores.log, stores.results, VERSION, settings)
        alerts = pipeline.decide(window, analysis, history, policy)
        run_id = pipeline.start_mlflow_run(client, experiment_id, VERSION)
        stored = pipeline.save(
            stores.results,
            "bench",
            window,
            analysis,
            alerts,
            datetime.now(UTC),
            run_id,
            settings.monitoring.history_chunks,
        )
    lap("store")
    with pipeline.temporary_folder() as tmp:
        rendered = pipeline.render(stored, policy, Path(tmp))
        lap("plot")
        pipeline.log_to_mlflow(client, run_id, stored, analysis, rendered)
        lap("mlflow")
    return {
        "wall": time.perf_counter() - started,
        "peak_mb": _peak_mb(),
        "rows": float(analysis.rows_read),
        "chunks": float(len(analysis.chunks)),
        "chunk_size": float(analysis.plan.chunk_size or 0),
        **{f"lap_{k}": v for k, v in laps.items()},
    }


def child_nannyml(folder: Path) -> dict[str, float]:
    """NannyML alone on the same frame with the same chunking."""
    import pandas as pd

    from monitoring import estimation, pipeline

    settings = _settings(folder)
    reference = pd.read_parquet(folder / "reference.parquet")
    frame = pd.read_parquet(folder / "window.parquet")
    plan = pipeline.plan_chunks(len(frame), len(reference), settings)
    started = time.perf_counter()
    estimation.run_nannyml(reference, frame, plan)
    return {"wall": time.perf_counter() - started, "peak_mb": _peak_mb()}


def _run_child(kind: str, folder: Path) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--folder", str(folder)],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


@dataclass(frozen=True)
class SizeResult:
    """Medians of the monitor run and of NannyML alone at one log size."""

    size: int
    chunks: float
    chunk_size: float
    monitor_s: float
    monitor_mb: float
    nannyml_s: float
    nannyml_mb: float
    laps: dict[str, float]


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the monitor run against NannyML alone.")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("monitor", "nannyml"))
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        assert args.folder is not None
        import warnings

        warnings.simplefilter("ignore")
        result = child_monitor(args.folder) if args.child == "monitor" else child_nannyml(args.folder)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    rows_out: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        for size in sizes:
            folder = Path(tmp) / str(size)
            folder.mkdir()
            t0 = time.perf_counter()
            setup(folder, size)
            sys.stdout.write(f"setup {size:>9,} rows: {time.perf_counter() - t0:.1f} s\n")
            sys.stdout.flush()
            monitor_runs, nannyml_runs = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                monitor_runs.append(_run_child("monitor", folder))
                nannyml_runs.append(_run_child("nannyml", folder))
            laps = {k: _median(monitor_runs, k) for k in monitor_runs[0] if k.startswith("lap_")}
            rows_out.append(
                SizeResult(
                    size=size,
                    chunks=monitor_runs[0]["chunks"],
                    chunk_size=monitor_runs[0]["chunk_size"],
                    monitor_s=_median(monitor_runs, "wall"),
                    monitor_mb=_median(monitor_runs, "peak_mb"),
                    nannyml_s=_median(nannyml_runs, "wall"),
                    nannyml_mb=_median(nannyml_runs, "peak_mb"),
                    laps=laps,
                )
            )
    out = sys.stdout.write
    out(f"\nmedians of {args.repeats}, each in a fresh process; peak = max RSS of that process\n")
    out(
        f"{'rows':>10} {'chunks':>7} {'size':>6} {'monitor s':>10} {'NannyML s':>10} {'ratio':>6} "
        f"{'monitor MB':>11} {'NannyML MB':>11} {'ratio':>6}\n"
    )
    for row in rows_out:
        time_ratio = row.monitor_s / row.nannyml_s
        memory_ratio = row.monitor_mb / row.nannyml_mb
        out(
            f"{row.size:>10,} {row.chunks:>7.0f} {row.chunk_size:>6.0f} {row.monitor_s:>10.2f} "
            f"{row.nannyml_s:>10.2f} {time_ratio:>6.2f} {row.monitor_mb:>11.0f} "
            f"{row.nannyml_mb:>11.0f} {memory_ratio:>6.2f}\n"
        )
        out("    monitor laps: " + ", ".join(f"{k[4:]} {v:.2f} s" for k, v in row.laps.items()) + "\n")
    if len(rows_out) > 1:
        first, last = rows_out[0], rows_out[-1]
        rows_ratio = last.size / first.size
        growth = last.monitor_s / first.monitor_s
        out(
            f"growth {first.size:,} -> {last.size:,} rows (x{rows_ratio:.0f}): "
            f"monitor time x{growth:.2f}, "
            f"NannyML time x{last.nannyml_s / first.nannyml_s:.2f}, "
            f"monitor memory x{last.monitor_mb / first.monitor_mb:.2f}\n"
        )
        out(
            f"targets at {last.size:,} rows: wall {last.monitor_s:.1f} s (<= 15), "
            f"peak {last.monitor_mb:.0f} MB (<= 1500), "
            f"ratio to NannyML {last.monitor_s / last.nannyml_s:.2f} (<= 3), "
            f"growth x{growth:.2f} (<= x{rows_ratio:.0f})\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
