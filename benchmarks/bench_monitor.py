"""Benchmark of the monitor run on busy windows against NannyML's own compute: ``make bench-monitor``.

For each window size (default 1 M, 2.7 M and 5 M logged predictions: 2.7 M is five minutes of the API's
~9,000 requests/s; reference 2,000 rows) it fills a SQLite prediction log (and, with ``--postgres-url``,
a Postgres one with the same rows), then runs, each in a fresh process so that peak memory is its own:
- ``monitor``: the whole monitor run: the window streamed from the log, NannyML (CBPE + univariate +
  PCA drift) slice by slice, realized performance, alert policy, results store, plot, MLflow;
- ``NannyML``: NannyML alone, the same calculators fitted on the same reference, on the same window
  loaded as one frame (saved by the setup), with the same chunking: the floor the monitor is compared to;
- ``read``: the window read alone (every batch built into frames, labels placed), from SQLite and
  from Postgres, so the two stores' reads show apart;
- ``monitor pg``: the whole monitor run reading the Postgres log (with ``--postgres-url``).
Each is repeated ``--repeats`` times, interleaved, and reported as the median and the range over the
rounds: over 5 rounds, min..max is a 94 % interval for the median (order statistics, no assumption on
the distribution). Verdicts use the interval's end.

Targets (issue 30): 2.7 M rows within 30 s wall; peak memory flat: 5 M within 1.2x of 1 M and <= 1 GB.

Postgres: pass a URL whose role may create databases (one per size is created and dropped), e.g. a
throw-away container: ``scripts/docker-offline.sh postgres`` (builds a stand-in postgres:15 where no
registry is reachable), then ``docker run -d --rm --name bench-pg -p 127.0.0.1:55432:5432
-e POSTGRES_PASSWORD=bench postgres:15`` and ``make bench-monitor
POSTGRES_URL=postgresql://postgres:bench@127.0.0.1:55432/postgres`` (``docker rm -f bench-pg`` after);
or Debian's ``postgresql`` package. Without a URL the Postgres columns are skipped, saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

VERSION = "1"
POOL_ROWS = 500_000  # distinct scored songs, repeated to fill a window (NannyML sees real variety)
FEEDBACK_FRACTION = 0.2
WRITE_BATCH = 50_000
TARGET_WALL_S = 30.0
TARGET_WALL_ROWS = 2_700_000
TARGET_GROWTH = 1.2
TARGET_PEAK_MB = 1024.0


def _settings(folder: Path, log_url: str, results_url: str | None = None) -> Any:
    from reggaeton.settings import Settings

    # One MLflow store for all sizes (creating its schema is slow); one log per size.
    shared = folder.parent / "mlflow"
    return Settings(
        state_dir=folder / "state",
        serving={"prediction_log_url": log_url},
        monitoring={"settle_s": 0.0, "results_url": results_url},
        mlflow={
            "tracking_uri": f"sqlite:///{shared / 'mlflow.db'}",
            "artifact_root": (shared / "art").as_uri(),
        },
    )


def _peak_mb() -> float:
    """This process's peak resident memory since it started (exec'd).

    Linux's VmHWM: ``getrusage``'s ``ru_maxrss`` survives ``execve``, so a child would report at least
    the peak of the process that started it (this benchmark's setup).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'predictions.db'}"


# --- Setup (not measured) -----------------------------------------------------------------------------


def prepare(root: Path) -> None:
    """Fit a champion once: the 2,000-row reference and a pool of scored songs, as Parquet files."""
    from adapters import registry
    from monitoring import simulate
    from reggaeton.data import features_array, split, synthetic_dataset
    from reggaeton.metrics import best_f1_threshold
    from reggaeton.model import RANDOM_FOREST, build_pipeline
    from reggaeton.schema import TARGET

    data = split(synthetic_dataset(4000, seed=3), 0.5, seed=3)
    pipeline = build_pipeline(RANDOM_FOREST, {"n_estimators": 50, "min_samples_leaf": 3}, seed=0)
    pipeline.fit(features_array(data.train), data.train[TARGET])
    proba = pipeline.predict_proba(features_array(data.holdout))[:, 1]
    threshold = best_f1_threshold(data.holdout[TARGET].to_numpy(), proba)
    registry.reference_frame(data.holdout, proba, threshold).to_parquet(root / "reference.parquet")
    songs = simulate.score(simulate.traffic("stable", POOL_ROWS, seed=5), pipeline, threshold)
    songs.to_parquet(root / "songs.parquet")
    (root / "mlflow").mkdir(exist_ok=True)


def _batches(rows: int, seed: int, start: datetime) -> Iterator[tuple[Any, ...]]:
    """The window's rows, ``WRITE_BATCH`` at a time: ids, times, features, probability, label, truth."""
    import numpy as np
    import pandas as pd

    from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY, TARGET

    pool = pd.read_parquet(Path(os.environ["BENCH_ROOT"]) / "songs.parquet")
    values = pool[[*FEATURE_NAMES, PROBABILITY]].to_numpy(dtype=np.float64)
    predicted, truth = pool[PREDICTION].to_numpy(), pool[TARGET].to_numpy()
    rng = np.random.default_rng(seed)
    for first in range(0, rows, WRITE_BATCH):
        count = min(WRITE_BATCH, rows - first)
        pick = rng.integers(0, len(pool), size=count)
        high, low = rng.integers(0, 2**63, size=(2, count), dtype=np.int64)
        ids = [f"{h:016x}{lo:016x}" for h, lo in zip(high.tolist(), low.tolist(), strict=True)]
        ids = [f"{i[:8]}-{i[8:12]}-4{i[13:16]}-a{i[17:20]}-{i[20:]}" for i in ids]
        times = pd.date_range(start + timedelta(seconds=first), periods=count, freq="s")
        labelled = rng.random(count) < FEEDBACK_FRACTION
        yield ids, times, values[pick], predicted[pick], truth[pick], labelled


def write_log(url: str, rows: int, start: datetime) -> None:
    """Fill a prediction log (made by ``create_tables``) the fast way: the driver's bulk paths."""
    from adapters import prediction_log

    engine = prediction_log.make_engine(url)
    prediction_log.create_tables(engine)
    received = start + timedelta(seconds=rows)
    columns = (
        "id, created_at, model_name, model_version, danceability, energy, speechiness, acousticness, "
        "valence, tempo, loudness, probability, prediction, route"
    )
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        postgres = engine.dialect.name == "postgresql"
        stamp = "%Y-%m-%d %H:%M:%S.%f+00" if postgres else "%Y-%m-%d %H:%M:%S.%f"
        for ids, times, values, predicted, truth, labelled in _batches(rows, 5, start):
            text_times = times.strftime(stamp).tolist()
            records = [
                (pid, at, "reggaeton-classifier", VERSION, *features, int(label), "champion")
                for pid, at, features, label in zip(
                    ids, text_times, values.tolist(), predicted.tolist(), strict=True
                )
            ]
            labels = [(ids[i], int(truth[i]), received.isoformat()) for i in range(len(ids)) if labelled[i]]
            if postgres:
                with cursor.copy(f"COPY predictions ({columns}) FROM STDIN") as copy:
                    for record in records:
                        copy.write_row(record)
                with cursor.copy("COPY feedback (prediction_id, label, received_at) FROM STDIN") as copy:
                    for label_row in labels:
                        copy.write_row(label_row)
            else:
                marks = ", ".join("?" * 14)
                cursor.executemany(f"INSERT INTO predictions ({columns}) VALUES ({marks})", records)
                cursor.executemany("INSERT INTO feedback VALUES (?, ?, ?)", labels)
            raw.commit()
        if postgres:
            raw.commit()
            cursor.execute("ANALYZE")
    finally:
        raw.commit()
        raw.close()
        engine.dispose()


def setup(folder: Path, rows: int, postgres_url: str | None) -> None:
    """A SQLite log (and a Postgres one) of ``rows`` predictions, and the window as one frame."""
    from adapters import log_window, prediction_log, registry

    start = datetime.now(UTC) - timedelta(seconds=rows + 3600)
    write_log(_sqlite_url(folder), rows, start)
    if postgres_url:
        write_log(postgres_url, rows, start)
    engine = prediction_log.make_engine(_sqlite_url(folder))
    # The exact frame the monitor reads, for NannyML alone.
    log_window.read_window(engine, VERSION).to_parquet(folder / "window.parquet")
    engine.dispose()
    settings = _settings(folder, _sqlite_url(folder))
    client = registry.connect(settings)
    registry.ensure_experiment(client, settings.mlflow.monitoring_experiment, settings)


# --- Measured children (each a fresh process) -----------------------------------------------------------


def child_monitor(folder: Path, log_url: str) -> dict[str, float]:
    """The whole monitor run (fresh results store each time), NannyML imported before the clock starts."""
    import nannyml  # noqa: F401 (a fixed ~2-3 s per process, left out of both children's times)
    import pandas as pd

    from adapters import registry
    from monitoring import pipeline

    results = f"sqlite:///{folder / f'results-{time.time_ns()}.db'}"
    settings = _settings(folder, log_url, results_url=results)
    reference = pd.read_parquet(Path(os.environ["BENCH_ROOT"]) / "reference.parquet")
    client = registry.connect(settings)
    experiment_id = registry.ensure_experiment(client, settings.mlflow.monitoring_experiment, settings)
    policy = pipeline.policy_from_settings(settings)
    laps: dict[str, float] = {}
    cpu = time.process_time()
    started = time.perf_counter()
    mark = started

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        laps[name] = now - mark
        mark = now

    with pipeline.open_stores(settings) as stores:
        window = pipeline.next_window(stores.results, VERSION, 0.0, datetime.now(UTC))
        analysis = pipeline.analyse(reference, window, stores.log, settings)
        lap("read+analyse")
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
        "cpu": time.process_time() - cpu,
        "peak_mb": _peak_mb(),
        "rows": float(analysis.rows_read),
        "chunks": float(len(analysis.chunks)),
        "chunk_size": float(analysis.plan.chunk_size or 0),
        **{f"lap_{k}": v for k, v in laps.items()},
    }


def child_nannyml(folder: Path) -> dict[str, float]:
    """NannyML alone on the same frame with the same chunking."""
    import nannyml  # noqa: F401 (imported before the clock starts, as the monitor child has it loaded)
    import pandas as pd

    from monitoring import estimation, pipeline

    settings = _settings(folder, _sqlite_url(folder))
    reference = pd.read_parquet(Path(os.environ["BENCH_ROOT"]) / "reference.parquet")
    frame = pd.read_parquet(folder / "window.parquet")
    plan = pipeline.plan_chunks(len(frame), len(reference), settings)
    cpu = time.process_time()
    started = time.perf_counter()
    estimation.run_nannyml(reference, frame, plan)
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "peak_mb": _peak_mb()}


def child_read(log_url: str) -> dict[str, float]:
    """The window read alone, as the monitor reads it: every batch a frame with its labels."""
    from adapters import log_window, prediction_log

    engine = prediction_log.make_engine(log_url)
    cpu = time.process_time()
    started = time.perf_counter()
    rows = 0
    with log_window.open_window(engine, VERSION) as window:
        for frame in window.frames():
            rows += len(frame)
    wall = time.perf_counter() - started
    engine.dispose()
    return {"wall": wall, "cpu": time.process_time() - cpu, "peak_mb": _peak_mb(), "rows": float(rows)}


def _run_child(root: Path, kind: str, folder: Path, log_url: str = "") -> dict[str, float]:
    command = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--log-url", log_url]
    completed = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "BENCH_ROOT": str(root)},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{completed.stderr[-3000:]}")
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


# --- Postgres databases of the benchmark ---------------------------------------------------------------


def _create_database(server_url: str, name: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(server_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


# --- Report --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Median and range of a measure over the rounds."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def text(self, digits: int = 1) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"


@dataclass(frozen=True)
class SizeResult:
    """Every measure at one window size."""

    size: int
    chunks: float
    chunk_size: float
    measures: dict[str, dict[str, Spread]]  # kind -> {"wall": ..., "cpu": ..., "peak_mb": ...}
    laps: dict[str, float]


KINDS = ("monitor", "nannyml", "read sqlite", "read pg", "monitor pg")
LOADS: list[float] = []  # the 1-minute load average before each round


def _measure(root: Path, size: int, repeats: int, postgres_url: str | None) -> SizeResult:
    folder = root / str(size)
    folder.mkdir()
    database = f"bench_monitor_{size}_{secrets.token_hex(3)}"
    pg_url = _create_database(postgres_url, database) if postgres_url else None
    try:
        started = time.perf_counter()
        setup(folder, size, pg_url)
        sys.stderr.write(f"setup {size:>9,} rows: {time.perf_counter() - started:.0f} s\n")
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
        sqlite = _sqlite_url(folder)
        for round_ in range(repeats):  # interleaved, so every kind sees the same machine load
            LOADS.append(os.getloadavg()[0])
            runs["monitor"].append(_run_child(root, "monitor", folder, sqlite))
            runs["nannyml"].append(_run_child(root, "nannyml", folder))
            runs["read sqlite"].append(_run_child(root, "read", folder, sqlite))
            if pg_url:
                runs["read pg"].append(_run_child(root, "read", folder, pg_url))
                runs["monitor pg"].append(_run_child(root, "monitor", folder, pg_url))
            done = ", ".join(f"{kind} {got[-1]['wall']:.1f} s" for kind, got in runs.items() if got)
            sys.stderr.write(f"  round {round_ + 1}: {done}\n")
    finally:
        if postgres_url:
            _drop_database(postgres_url, database)
    measures = {
        kind: {key: Spread.of([run[key] for run in got]) for key in ("wall", "cpu", "peak_mb")}
        for kind, got in runs.items()
        if got
    }
    first = runs["monitor"][0]
    laps = {
        k[4:]: statistics.median(run[k] for run in runs["monitor"]) for k in first if k.startswith("lap_")
    }
    return SizeResult(size, first["chunks"], first["chunk_size"], measures, laps)


def _report(results: list[SizeResult], repeats: int, postgres: bool) -> None:
    out = sys.stdout.write
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    load = f"load average {min(LOADS):.1f}-{max(LOADS):.1f}" if LOADS else ""
    out(
        f"\nMonitor benchmark, {when}, {platform.machine()}, {os.cpu_count()} cores, {load}; "
        f"median (min-max) of {repeats} rounds, each in a fresh process; peak = max RSS of that process\n"
    )
    if not postgres:
        out("Postgres: skipped (no --postgres-url given; see this file's docstring to run one)\n")
    kinds = [kind for kind in KINDS if postgres or "pg" not in kind]
    header = ["rows", "chunks x size", *(f"{kind} {unit}" for kind in kinds for unit in ("s", "MB"))]
    header.append("monitor / NannyML")
    out("\nWall time and peak memory:\n")
    out("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for result in results:
        cells = [f"{result.size:,}", f"{result.chunks:.0f} x {result.chunk_size:,.0f}"]
        for kind in kinds:
            cells += [result.measures[kind]["wall"].text(), result.measures[kind]["peak_mb"].text(0)]
        ratio = result.measures["monitor"]["wall"].median / result.measures["nannyml"]["wall"].median
        cells.append(f"{ratio:.2f}")
        out("| " + " | ".join(cells) + " |\n")
    # CPU seconds of each process: what the work costs, much less moved by other load than wall time.
    out("\nCPU seconds (the process's own, whatever else runs on the machine):\n")
    header = ["rows", *(f"{kind} cpu s" for kind in kinds), "monitor / NannyML"]
    out("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for result in results:
        cells = [f"{result.size:,}", *(result.measures[kind]["cpu"].text() for kind in kinds)]
        ratio = result.measures["monitor"]["cpu"].median / result.measures["nannyml"]["cpu"].median
        cells.append(f"{ratio:.2f}")
        out("| " + " | ".join(cells) + " |\n")
    for result in results:
        out(
            f"{result.size:>10,} rows, monitor laps (medians): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in result.laps.items())
        )
        out("\n")
    by_size = {result.size: result for result in results}
    if TARGET_WALL_ROWS in by_size:
        wall = by_size[TARGET_WALL_ROWS].measures["monitor"]["wall"]
        cpu = by_size[TARGET_WALL_ROWS].measures["monitor"]["cpu"]
        verdict = "met" if wall.high <= TARGET_WALL_S else "NOT met"
        out(
            f"target {TARGET_WALL_ROWS:,} rows within {TARGET_WALL_S:g} s wall: {wall.text()} s, {verdict} "
            f"(CPU {cpu.text()} s)\n"
        )
    if len(results) > 1:
        small, large = results[0], results[-1]
        low = small.measures["monitor"]["peak_mb"]
        high = large.measures["monitor"]["peak_mb"]
        growth = high.high / low.low
        verdict = "met" if growth <= TARGET_GROWTH and high.high <= TARGET_PEAK_MB else "NOT met"
        out(
            f"target flat memory: {large.size:,} rows peak {high.text(0)} MB vs {small.size:,} rows "
            f"{low.text(0)} MB: x{growth:.2f} at most (<= x{TARGET_GROWTH:g}), <= {TARGET_PEAK_MB:.0f} MB: "
            f"{verdict}\n"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the monitor run on busy windows.")
    parser.add_argument("--sizes", default="1000000,2700000,5000000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres-url", help="a Postgres server whose role may CREATE DATABASE")
    parser.add_argument("--child", choices=("monitor", "nannyml", "read"))
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--log-url", default="")
    args = parser.parse_args()
    if args.child:
        import warnings

        warnings.simplefilter("ignore")
        if args.child == "monitor":
            result = child_monitor(args.folder, args.log_url)
        elif args.child == "nannyml":
            result = child_nannyml(args.folder)
        else:
            result = child_read(args.log_url)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        root = Path(tmp)
        os.environ["BENCH_ROOT"] = str(root)
        prepare(root)
        results = [_measure(root, size, args.repeats, args.postgres_url) for size in sizes]
    _report(results, args.repeats, args.postgres_url is not None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
