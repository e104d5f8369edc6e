"""Benchmark of batch scoring: ``make bench-score``.

On one generated catalogue (the calibrated synthetic songs with a track id, features at Spotify's three
decimals, as CSV under the system's temporary folder), scored by the same registered version (the data
scientist's baseline: min-max scaling, SMOTE, 300 boosted trees, fitted on the synthetic sample):

- ``reggaeton score`` on its first 1 M rows, alternated round by round with ``mlflow models predict -m
  models:/... --env-manager local`` on the same file (the ratio of their wall times, each round paired);
- ``reggaeton score`` on all 10 M rows.

Each command runs in a fresh process, from start to exit (imports, model load, reading, scoring,
writing). Peak memory is measured two ways: the largest process (``ru_maxrss`` from ``wait4``, exact)
and the whole process tree (the parent and its scoring workers, summed from /proc every 0.1 s).
Prints medians over ``--rounds`` rounds with their range (for 5 rounds, [min, max] holds the median with
94 % confidence), and the targets: ratio >= 10x, 10 M rows <= 60 s, peak RSS at 10 M within 1.2x of 1 M.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BIN = Path(sys.executable).parent
BLOCK_ROWS = 1_000_000
TARGET_RATIO = 10.0
TARGET_10M_S = 60.0
TARGET_RSS_GROWTH = 1.2


@dataclass(frozen=True)
class Measured:
    """One command run: wall time and peak memory."""

    wall_s: float
    largest_mb: float  # the largest single process
    tree_mb: float  # the whole process tree, sampled


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def register(state: Path) -> str:
    """Fit the baseline on the synthetic sample and register it; returns the tracking URI."""
    import mlflow

    from adapters import registry
    from reggaeton import names
    from reggaeton.data import features_array, synthetic_dataset
    from reggaeton.model import baseline_pipeline
    from reggaeton.schema import TARGET
    from reggaeton.settings import Settings

    settings = Settings(state_dir=state)
    client = registry.connect(settings)
    data = synthetic_dataset(2300, seed=42)
    pipeline = baseline_pipeline(seed=0).fit(features_array(data.frame), data.frame[TARGET])
    with mlflow.start_run(
        experiment_id=registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    ):
        info = registry.log_model(pipeline, data.frame, threshold=0.5)
    registry.register(client, info, names.MODEL_NAME, {names.Tag.THRESHOLD: 0.5})
    return settings.tracking_uri


def write_catalogue(path: Path, blocks: int) -> None:
    """``blocks`` million synthetic songs as CSV (block i is the same in every file)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from reggaeton import synthetic
    from reggaeton.schema import FEATURE_NAMES

    with pa_csv.CSVWriter(
        path, pa.schema([("track_id", pa.int64())] + [(f, pa.float64()) for f in FEATURE_NAMES])
    ) as out:
        for block in range(blocks):
            frame = synthetic.generate(BLOCK_ROWS, seed=1000 + block)
            columns = {"track_id": np.arange(block * BLOCK_ROWS, (block + 1) * BLOCK_ROWS)}
            columns.update({name: frame[name].to_numpy().round(3) for name in FEATURE_NAMES})
            out.write_table(pa.table(columns))


def setup(folder: Path, big: int) -> None:
    """The registered version and the two catalogues (the 1 M rows are the first rows of the large one)."""
    (folder / "tracking_uri").write_text(register(folder / "state"))
    write_catalogue(folder / "catalogue-1m.csv", 1)
    write_catalogue(folder / f"catalogue-{big}m.csv", big)


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def measure(command: list[str], env: dict[str, str], cwd: Path) -> Measured:
    """Run a command to its end; its wall time and peak memory (fails loudly when it fails)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree_kb = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        tree_kb = max(tree_kb, _rss_mb(_tree(process.pid)))
        time.sleep(0.1)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} exited {process.returncode}:\n{errors[-3000:]}")
    return Measured(wall, usage.ru_maxrss / 1024, tree_kb)


def _median(runs: list[Measured], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def _span(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big", type=int, default=10, help="millions of rows of the large catalogue")
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup is not None:
        setup(args.setup, args.big)
        return 0
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        folder = Path(tmp)
        _say(f"setup in {folder}: registering the baseline, writing the catalogues ...")
        # In a process of its own: on Linux a child's ru_maxrss starts from its parent's peak (exec
        # keeps it), so this process stays small for the measured commands' peaks to be their own.
        subprocess.run([sys.executable, __file__, "--setup", str(folder), "--big", str(args.big)], check=True)
        tracking_uri = (folder / "tracking_uri").read_text()
        small, big = folder / "catalogue-1m.csv", folder / f"catalogue-{args.big}m.csv"
        small_bytes, big_bytes = small.stat().st_size, big.stat().st_size
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("REGGAETON_", "MLFLOW_"))
        }
        env.update(
            {
                "REGGAETON_STATE_DIR": str(folder / "state"),
                "REGGAETON_MLFLOW__TRACKING_URI": tracking_uri,
                "MLFLOW_TRACKING_URI": tracking_uri,
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
        )
        model = "models:/reggaeton-classifier/1"

        def ours(catalogue: Path, out: str) -> list[str]:
            return [str(BIN / "reggaeton"), "score", str(catalogue), "--out", out, "--version", "1"]

        mlflow_runs, small_runs, big_runs = [], [], []
        for index in range(args.rounds):  # alternated, so both see the same machine load
            predict = [str(BIN / "mlflow"), "models", "predict", "-m", model, "-i", str(small), "-t", "csv"]
            predict += ["-o", str(folder / "mlflow.json"), "--env-manager", "local"]
            mlflow_runs.append(measure(predict, env, folder))
            small_runs.append(measure(ours(small, f"scored-1m-{index}"), env, folder))
            _say(
                f"round {index + 1}: 1 M rows: mlflow {mlflow_runs[-1].wall_s:.1f} s, "
                f"reggaeton score {small_runs[-1].wall_s:.1f} s"
            )
        for index in range(args.rounds):
            big_runs.append(measure(ours(big, f"scored-big-{index}"), env, folder))
            _say(f"round {index + 1}: {args.big} M rows: reggaeton score {big_runs[-1].wall_s:.1f} s")
        agreement = _agreement(folder / "mlflow.json", folder / "scored-1m-0" / "scores")
    load_after = os.getloadavg()

    ratios = [m.wall_s / s.wall_s for m, s in zip(mlflow_runs, small_runs, strict=True)]
    big_rows = args.big * BLOCK_ROWS
    _say()
    _say(
        f"bench-score {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({platform.machine()}), "
        f"Python {platform.python_version()}; catalogue CSV 1 M rows {small_bytes / 1e6:.0f} MB, "
        f"{args.big} M rows {big_bytes / 1e6:.0f} MB; model: the baseline (300 trees)"
    )
    _say(f"medians of {args.rounds} rounds [min, max], each command a fresh process from start to exit")
    _say(f"{'':28} {'wall s':>22} {'rows/s':>12} {'largest MB':>11} {'all MB':>8}")
    for name, runs, rows in (
        ("mlflow models predict, 1 M", mlflow_runs, BLOCK_ROWS),
        ("reggaeton score, 1 M", small_runs, BLOCK_ROWS),
        (f"reggaeton score, {args.big} M", big_runs, big_rows),
    ):
        walls = [run.wall_s for run in runs]
        _say(
            f"{name:28} {_span(walls):>22} {rows / statistics.median(walls):>12,.0f} "
            f"{_median(runs, 'largest_mb'):>11.0f} {_median(runs, 'tree_mb'):>8.0f}"
        )
    big_s = _median(big_runs, "wall_s")
    growth = _median(big_runs, "tree_mb") / _median(small_runs, "tree_mb")
    growth_largest = _median(big_runs, "largest_mb") / _median(small_runs, "largest_mb")
    _say(
        f"ratio mlflow / reggaeton score at 1 M rows, paired by round: {_span(ratios)} "
        f"(target >= {TARGET_RATIO:g})"
    )
    _say(f"{args.big} M rows: {big_s:.1f} s (target <= {TARGET_10M_S:g} s)")
    _say(
        f"peak RSS {args.big} M / 1 M: all processes x{growth:.2f}, largest process x{growth_largest:.2f} "
        f"(target <= {TARGET_RSS_GROWTH})"
    )
    _say(f"answers: {agreement}")
    _say(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (1 min)")
    return 0


def _agreement(mlflow_json: Path, scores: Path) -> str:
    """The largest difference between the two tools' probabilities on the 1 M rows."""
    import json

    import numpy as np
    import pandas as pd

    theirs = np.asarray(json.loads(mlflow_json.read_text())["predictions"], dtype=np.float64)[:, 1]
    ours = pd.read_parquet(scores)["probability"].to_numpy()
    return f"max |difference| between the two tools' probabilities {np.max(np.abs(theirs - ours)):.1e}"


if __name__ == "__main__":
    raise SystemExit(main())
