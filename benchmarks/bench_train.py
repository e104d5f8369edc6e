"""Benchmark: 50 Optuna trials on the original data, side by side with today's study, and trial logging.

Prints, for the retrain's study (median pruner on per-fold scores, the baseline's equivalent as the
first trial, one trial per core scored in worker processes, nested MLflow runs written by a
background thread) and for the same study without pruning and warm start (what training did before),
measured alternately in this run: wall and CPU seconds (median of ``--runs``) and their ratio; the
held-out PR-AUC of each run's best model and of the data scientist's baseline, on the same split,
with bootstrap intervals, and the difference of the two studies' means over the runs (its interval
resamples the held-out rows, the same for both, and each study's runs); and the logging overhead: the
retrain study's configurations replayed with and without the trial recorder, in alternating blocks of
ten, as a ratio. Targets: 50 trials <= 30 s wall on 2 cores, logging ratio <= 1.05, tuned held-out
PR-AUC (median of the runs) >= today's and >= the baseline's.

On a shared machine wall times follow the other processes' load: CPU seconds (all threads of this
process and its trial worker processes) are printed beside them, and the ratios compare runs made
under the same load.

Usage: python benchmarks/bench_train.py [--data FOLDER] [--trials N] [--jobs N] [--runs N]
(default data: $REGGAETON_BENCH_DATA, else ../shared/data/reggaeton-2018 beside the repository).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import InMemoryStorage

from adapters import registry
from adapters.tracking import TrialRecorder
from reggaeton import tuning
from reggaeton.data import Split, features_array, load_folder, split
from reggaeton.metrics import SCORE_METRICS, mean_difference_interval
from reggaeton.model import BASELINE
from reggaeton.schema import TARGET
from reggaeton.settings import DataSettings, Settings
from reggaeton.training import BASELINE_THRESHOLD, Evaluation, evaluate_holdout, fit_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "reggaeton-2018"
TARGET_WALL_S = 30.0
TARGET_RATIO = 1.05
BLOCK = 10
RETRAIN, TODAY = "retrain study", "today's study"


def _cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its ended children (the trial workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds of this process and its trial workers, and the result."""
    wall, cpu = time.perf_counter(), _cpu_s()
    result = fn()
    return time.perf_counter() - wall, _cpu_s() - cpu, result


class Bench:
    """The data, the tracking store and the study options shared by every measurement."""

    def __init__(self, args: argparse.Namespace, state: Path) -> None:
        self.args = args
        self.settings = Settings(state_dir=state, data=DataSettings(folder=args.data))
        self.parts: Split = split(
            load_folder(args.data), self.settings.data.holdout_fraction, self.settings.data.seed
        )
        self.X, self.y = features_array(self.parts.train), self.parts.train[TARGET].to_numpy()
        self.client = registry.connect(self.settings)
        self.experiment_id = registry.ensure_experiment(self.client, "bench-train", self.settings)
        self.settings.ensure_state_dir()

    def study(self, name: str, *, retrain: bool, log: bool, storage: Any = None, **options: Any) -> Any:
        """One study: the retrain's (pruning, warm start) or today's; trials recorded when ``log``."""
        training = self.settings.training
        warm = (
            tuning.warm_start_trials(training.families, None) if retrain and "enqueue" not in options else []
        )
        parent = self.client.create_run(self.experiment_id, run_name=name).info.run_id
        recorder = TrialRecorder(self.client, self.experiment_id, parent) if log else None
        with recorder if recorder is not None else contextlib.nullcontext():
            return tuning.tune(
                self.X,
                self.y,
                storage=storage or self.settings.optuna_storage,
                study_name=name,
                families=training.families,
                n_trials=options.pop("n_trials", self.args.trials),
                folds=training.cv_folds,
                repeats=training.cv_repeats,
                seed=training.seed,
                n_jobs=self.args.jobs,
                callbacks=[recorder] if recorder else [],
                progress_bar=False,
                warm_start=warm,
                pruning=retrain,
                **options,
            )

    def held_out(self, result: tuning.TuningResult) -> Evaluation:
        """The best trial refitted on the training part, scored on the held-out part."""
        seed, rounds = self.settings.training.seed, self.settings.training.bootstrap_rounds
        pipeline = fit_pipeline(result.family, result.params, self.parts.train, seed)
        return evaluate_holdout(
            result.family, pipeline, self.parts.holdout, result.threshold, rounds=rounds, seed=seed
        )

    def baseline(self) -> Evaluation:
        seed, rounds = self.settings.training.seed, self.settings.training.bootstrap_rounds
        pipeline = fit_pipeline(BASELINE, {}, self.parts.train, seed=0)
        return evaluate_holdout(
            BASELINE, pipeline, self.parts.holdout, BASELINE_THRESHOLD, rounds=rounds, seed=seed
        )


def _pr_auc(evaluation: Evaluation) -> str:
    interval = evaluation.intervals["pr_auc"]
    return f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def _side_by_side(bench: Bench) -> dict[str, list[tuple[float, float, Any]]]:
    """Both studies ``--runs`` times, alternating which goes first; (wall, CPU, result) per run."""
    measured: dict[str, list[tuple[float, float, Any]]] = {RETRAIN: [], TODAY: []}
    for run in range(bench.args.runs):
        order = (RETRAIN, TODAY) if run % 2 == 0 else (TODAY, RETRAIN)
        for kind in order:
            name = f"{'retrain' if kind == RETRAIN else 'today'}-{run}"
            measured[kind].append(_timed(partial(bench.study, name, retrain=kind == RETRAIN, log=True)))
    return measured


def _logging_overhead(bench: Bench, configurations: list[dict[str, Any]]) -> dict[bool, list[float]]:
    """The same configurations with and without the recorder, alternating blocks; logged? -> [wall, CPU]."""
    totals = {False: [0.0, 0.0], True: [0.0, 0.0]}
    storages = {log: InMemoryStorage() for log in (False, True)}  # enqueued trials: thread-safe storage
    training = bench.settings.training
    # One set of trial workers for every block: their start-up is not part of what logging costs.
    with tuning.start_pool(
        bench.X,
        bench.y,
        processes=tuning.parallel_trials(bench.args.jobs, bench.args.trials),
        folds=training.cv_folds,
        repeats=training.cv_repeats,
        seed=training.seed,
    ) as pool:
        for start in range(0, len(configurations), BLOCK):
            block = configurations[start : start + BLOCK]
            for log in (False, True) if start // BLOCK % 2 == 0 else (True, False):
                replay = partial(
                    bench.study, f"replay-{log}", retrain=True, log=log, storage=storages[log],
                    enqueue=block, pool=pool,
                )  # fmt: skip
                wall, cpu, _ = _timed(partial(replay, n_trials=len(block)))
                totals[log][0] += wall
                totals[log][1] += cpu
    return totals


def _report(
    bench: Bench, measured: dict[str, list[tuple[float, float, Any]]], totals: dict[bool, list[float]]
) -> None:
    args, training = bench.args, bench.settings.training
    parallel, threads = tuning.parallel_trials(args.jobs, args.trials), tuning.THREADS_PER_TRIAL
    load = os.getloadavg()
    print(
        f"bench-train: {args.trials} trials, {training.cv_folds}-fold CV, "
        f"families {', '.join(training.families)}"
    )
    print(
        f"  machine: {tuning.available_cores()} cores, {parallel} parallel trials (worker processes) "
        f"x {threads} thread, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    medians = {}
    for kind, runs in measured.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        medians[kind] = (wall, cpu)
        pruned = statistics.median(r[2].pruned for r in runs)
        print(
            f"  {kind:14s} median of {len(runs)}: {wall:6.1f} s wall, {cpu:6.1f} CPU-s, "
            f"{pruned:.0f} trials pruned "
            f"(runs: {', '.join(f'{r[0]:.1f}' for r in runs)} s)"
        )
    (wall, cpu), (old_wall, old_cpu) = medians[RETRAIN], medians[TODAY]
    print(
        f"  retrain / today: {wall / old_wall:.2f} wall, {cpu / old_cpu:.2f} CPU; retrain study "
        f"{'met' if wall <= TARGET_WALL_S else 'MISSED'} the {TARGET_WALL_S:.0f} s target "
        f"(CPU-s / {parallel} = {cpu / parallel:.1f} s on {parallel} idle cores)"
    )
    print("  held-out PR-AUC [95 % bootstrap interval], same split and seed, each run's best trial:")
    baseline = bench.baseline()
    held_out: dict[str, float] = {}
    evaluations: dict[str, list[Evaluation]] = {}
    for kind, runs in measured.items():
        scores = evaluations[kind] = [bench.held_out(r[2]) for r in runs]
        cells = ", ".join(f"{e.name} {_pr_auc(e)}" for e in scores)
        print(f"    {kind:14s} {cells}")
        held_out[kind] = statistics.median(e.intervals["pr_auc"].estimate for e in scores)
    print(f"    baseline       {_pr_auc(baseline)}")
    tuned, old, base = held_out[RETRAIN], held_out[TODAY], baseline.intervals["pr_auc"].estimate
    print(
        f"  median held-out PR-AUC: retrain {tuned:.3f}, today's {old:.3f}, baseline {base:.3f}: "
        f"quality {'held' if tuned >= old and tuned >= base else 'NOT held'} "
        f"(target: retrain >= today's and >= the baseline)"
    )
    gain = mean_difference_interval(
        bench.parts.holdout[TARGET].to_numpy(),
        [e.proba for e in evaluations[TODAY]],
        [e.proba for e in evaluations[RETRAIN]],
        SCORE_METRICS["pr_auc"],
        training.bootstrap_rounds,
        training.seed,
    )
    print(
        "  retrain - today's, mean held-out PR-AUC of the runs (bootstrap of the rows, paired, and runs): "
        f"{gain.estimate:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}]: "
        f"{'WORSE beyond noise' if gain.high < 0 else 'not worse beyond noise'}"
    )
    (plain, plain_cpu), (logged, logged_cpu) = totals[False], totals[True]
    ratio, cpu_ratio = logged / plain, logged_cpu / plain_cpu
    print(
        f"  retrain study's configurations replayed without logging: {plain:6.1f} s wall, "
        f"{plain_cpu:6.1f} CPU-s"
    )
    print(
        f"  the same with the background trial recorder:             {logged:6.1f} s wall, "
        f"{logged_cpu:6.1f} CPU-s (this process: the trial workers' share is the same in both)"
    )
    print(
        f"  logging overhead ratio: {ratio:.3f} wall (target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}), {cpu_ratio:.3f} CPU "
        f"(~{(logged_cpu - plain_cpu) / args.trials * 1000:.0f} CPU-ms per trial)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("REGGAETON_BENCH_DATA", DEFAULT_DATA))
    )
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=None, help="parallel trials (default: one per core)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp) / "state")
        measured = _side_by_side(bench)
        study = optuna.load_study(study_name="retrain-0", storage=bench.settings.optuna_storage)
        configurations = [trial.params for trial in study.trials]
        totals = _logging_overhead(bench, configurations)
        _report(bench, measured, totals)


if __name__ == "__main__":
    main()
