"""Benchmark: 50 Optuna trials on the original data, and the cost of recording each trial in MLflow.

Prints the wall time of a 50-trial TPE study (2 parallel trials, one OpenMP/BLAS thread each, a nested
MLflow run per trial) and the logging overhead: the same 50 configurations replayed with and without
the MLflow trial logger, in this run, as a ratio. Targets: 50 trials <= 30 s on 2 cores, ratio <= 1.05.

On a shared machine wall times follow the other processes' load, so the replays alternate in blocks
of ten configurations (load drifts hit both sides alike; in-memory Optuna storage), and CPU seconds
(all threads of this process) are reported beside wall seconds: their ratio does not depend on how
many cores the other processes take.

Usage: python benchmarks/bench_train.py [--data FOLDER] [--trials N] [--jobs N]
(default data: $REGGAETON_BENCH_DATA, else ../shared/data/reggaeton-2018 beside the repository).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import InMemoryStorage

from adapters import registry
from adapters.tracking import trial_logger
from reggaeton.data import features_array, load_folder, split
from reggaeton.schema import TARGET
from reggaeton.settings import DataSettings, Settings
from reggaeton.tuning import tune

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "reggaeton-2018"
TARGET_WALL_S = 30.0
TARGET_RATIO = 1.05


BLOCK = 10


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of the whole process (all threads), and the result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("REGGAETON_BENCH_DATA", DEFAULT_DATA))
    )
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(state_dir=Path(tmp) / "state", data=DataSettings(folder=args.data))
        training = settings.training
        parts = split(load_folder(args.data), settings.data.holdout_fraction, settings.data.seed)
        X, y = features_array(parts.train), parts.train[TARGET].to_numpy()
        client = registry.connect(settings)
        experiment_id = registry.ensure_experiment(client, "bench-train", settings)
        settings.ensure_state_dir()

        parents: dict[str, str] = {}
        # Replays enqueue trials: in-memory storage (thread-safe), one per side, kept across blocks.
        replay_storage = {name: InMemoryStorage() for name in ("replay-plain", "replay-logged")}

        def study(name: str, log: bool, enqueue: list[dict[str, Any]] | None = None) -> Any:
            callbacks = []
            if log:
                if name not in parents:
                    parents[name] = client.create_run(experiment_id, run_name=name).info.run_id
                callbacks.append(trial_logger(client, experiment_id, parents[name]))
            return tune(
                X,
                y,
                storage=replay_storage.get(name, settings.optuna_storage),
                study_name=name,
                families=training.families,
                n_trials=len(enqueue) if enqueue else args.trials,
                folds=training.cv_folds,
                repeats=training.cv_repeats,
                seed=training.seed,
                n_jobs=args.jobs,
                callbacks=callbacks,
                progress_bar=False,
                enqueue=enqueue or [],
            )

        wall, cpu, best = _timed(lambda: study("tpe-logged", log=True))
        configurations = [
            trial.params
            for trial in optuna.load_study(study_name="tpe-logged", storage=settings.optuna_storage).trials
        ]
        totals = {False: [0.0, 0.0], True: [0.0, 0.0]}  # logged? -> [wall, cpu]
        for start in range(0, len(configurations), BLOCK):
            block = configurations[start : start + BLOCK]
            for log in (False, True):
                name = "replay-logged" if log else "replay-plain"
                block_wall, block_cpu, _ = _timed(lambda: study(name, log=log, enqueue=block))  # noqa: B023
                totals[log][0] += block_wall
                totals[log][1] += block_cpu
        trial_runs = len(client.search_runs([experiment_id], max_results=1000))

    (plain, plain_cpu), (logged, logged_cpu) = totals[False], totals[True]
    ratio, cpu_ratio = logged / plain, logged_cpu / plain_cpu
    per_trial_ms = (logged_cpu - plain_cpu) / args.trials * 1000
    load = os.getloadavg()
    print(
        f"bench-train: {args.trials} trials, {args.jobs} parallel, {training.cv_folds}-fold CV, "
        f"families {', '.join(training.families)}"
    )
    print(f"  machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"  TPE study with a nested MLflow run per trial: {wall:6.1f} s wall, {cpu:6.1f} CPU-s "
        f"(target <= {TARGET_WALL_S:.0f} s wall: {'met' if wall <= TARGET_WALL_S else 'MISSED'}; "
        f"CPU-s / {args.jobs} = {cpu / args.jobs:.1f} s on {args.jobs} idle cores)"
    )
    print(f"  best: {best.family} CV PR-AUC {best.cv_mean:.3f} +- {best.cv_std:.3f}")
    print(f"  same configurations replayed without logging: {plain:6.1f} s wall, {plain_cpu:6.1f} CPU-s")
    print(f"  same configurations replayed with logging:    {logged:6.1f} s wall, {logged_cpu:6.1f} CPU-s")
    print(
        f"  logging overhead ratio: {ratio:.3f} wall (target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}), {cpu_ratio:.3f} CPU "
        f"(~{per_trial_ms:.0f} CPU-ms per trial)"
    )
    print(f"  MLflow runs recorded: {trial_runs} (2 parents + {trial_runs - 2} trials)")


if __name__ == "__main__":
    main()
