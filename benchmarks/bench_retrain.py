"""Benchmark: a drift retrain on the original data, judged slice by slice against the model it replaces.

Each round replays the demo's loop on the original songs: a first model is tuned and fitted on the
original data's training part; simulated traffic (5,000 stable songs, then 5,000 with the drift
scenario's new sub-genre, 30 % of them labelled) is scored by it; then the retrain is tuned and fitted
on the original data plus the labelled traffic, twice: as training does now (the base data kept at
least ``data.min_base_share`` of the rows: a folder's traffic sampled down to fit) and as it did before
(every labelled row added). The gate's evaluation rows (the retrain's held-out rows, the first model's
held-out rows: the stable split holds the same songs out of both) are scored by both models and judged
per slice with the gate's own rule.

Prints, per round and per slice, side by side: the PR-AUC of the model replaced and of each retrain
with the paired interval of the difference and the gate's verdict; then, over the rounds, each slice's
mean difference with a t-interval (rounds differ in the split's salt, the traffic and the tuning's
seed). Verdicts need at least 5 rounds (the statistics protocol).

Usage: python benchmarks/bench_retrain.py [--data FOLDER] [--rounds N] [--trials N]
(default data: $REGGAETON_BENCH_DATA, else ../shared/data/reggaeton-2018 beside the repository).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.storages import InMemoryStorage
from scipy import stats

from adapters.registry import reference_frame
from flows import gate
from flows.train import base_and_traffic
from monitoring import simulate
from reggaeton import model, tuning
from reggaeton.data import Dataset, Split, features_array, held_out, split, with_extra_rows
from reggaeton.promotion import ModelScores, SliceResult, decide, slice_lines
from reggaeton.schema import OBSERVED_AT, TARGET
from reggaeton.settings import DataSettings, Settings, TrainingSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(
    os.environ.get("REGGAETON_BENCH_DATA", REPO_ROOT.parent / "shared" / "data" / "reggaeton-2018")
)
KEPT, ALL = "retrain (base kept)", "retrain (all traffic)"
TRAFFIC_ROWS, FEEDBACK = 5000, 0.3


@dataclass(frozen=True)
class Model:
    """A fitted pipeline with its threshold and the held-out part it was evaluated on."""

    pipeline: Any
    threshold: float
    parts: Split

    def reference(self) -> pd.DataFrame:
        proba = self.pipeline.predict_proba(features_array(self.parts.holdout))[:, 1]
        return reference_frame(self.parts.holdout, proba, self.threshold)


def fit(settings: Settings, dataset: Dataset, study: str) -> Model:
    """Split, tune (in memory) and fit as training does."""
    parts = split(dataset, settings.data.holdout_fraction, settings.data.seed)
    training = settings.training
    result = tuning.tune(
        features_array(parts.train),
        parts.train[TARGET].to_numpy(),
        storage=InMemoryStorage(),
        study_name=study,
        families=training.families,
        n_trials=training.n_trials,
        folds=training.cv_folds,
        repeats=training.cv_repeats,
        seed=training.seed,
        n_jobs=training.n_jobs,
        progress_bar=False,
        warm_start=tuning.warm_start_trials(training.families, None),
    )
    pipeline = model.build_pipeline(result.family, result.params, training.seed)
    pipeline.fit(features_array(parts.train), parts.train[TARGET].to_numpy())
    return Model(pipeline, result.threshold, parts)


def labelled_traffic(first: Model, seed: int) -> pd.DataFrame:
    """The demo's traffic, scored by the first model, its labelled 30 % with their prediction times."""
    rng = np.random.default_rng(seed)
    parts = []
    start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    for offset, scenario in enumerate(("stable", "drift")):
        songs = simulate.traffic(scenario, TRAFFIC_ROWS, seed + offset)
        songs[OBSERVED_AT] = pd.date_range(
            start + pd.Timedelta(minutes=20 * offset), periods=len(songs), freq="100ms"
        )
        parts.append(songs.loc[rng.random(len(songs)) < FEEDBACK])
    return pd.concat(parts, ignore_index=True)


def judge(settings: Settings, replaced: Model, retrained: Model) -> tuple[SliceResult, ...]:
    """The gate's slices on its evaluation rows: the retrain's held-out rows and the first model's."""
    frame = gate.evaluation_frame(
        retrained.reference(),
        pd.DataFrame(),
        champion_reference=replaced.reference(),
        held_out=partial(held_out, fraction=settings.data.holdout_fraction, seed=settings.data.seed),
    )
    X, y = features_array(frame), frame[TARGET].to_numpy()
    scores = [
        ModelScores(name, gate.evaluation_hash(frame), y, m.pipeline.predict_proba(X)[:, 1])
        for name, m in (("replaced", replaced), ("retrained", retrained))
    ]
    decision = decide(
        scores[0],
        scores[1],
        settings.promotion,
        overall=gate.overall_rows(frame),
        slices=gate.slice_rows(frame, settings.promotion),
    )
    return decision.slices


def one_round(args: argparse.Namespace, index: int, state: Path) -> dict[str, tuple[SliceResult, ...]]:
    seed = 42 + index
    training = TrainingSettings(n_trials=args.trials, seed=seed)
    base = Settings(state_dir=state, data=DataSettings(folder=args.data, seed=seed), training=training)
    everything = base.model_copy(update={"data": base.data.model_copy(update={"min_base_share": 0.0})})
    started = time.perf_counter()
    original, _ = base_and_traffic(base, None)
    first = fit(base, original, f"first-{index}")
    traffic = labelled_traffic(first, seed)
    results = {}
    for name, settings in ((KEPT, base), (ALL, everything)):
        kept_base, kept_traffic = base_and_traffic(settings, traffic)
        dataset = with_extra_rows(kept_base, kept_traffic, "traffic")
        retrained = fit(settings, dataset, f"{name}-{index}")
        results[name] = judge(settings, first, retrained)
        rows = 0 if kept_traffic is None else len(kept_traffic)
        print(f"\nround {index + 1}, {name}: {rows} of {len(traffic)} labelled traffic rows trained on")
        for line in slice_lines([_record(r) for r in results[name]]):
            print(f"  {line}")
    print(f"round {index + 1}: {time.perf_counter() - started:.0f} s")
    return results


def _record(result: SliceResult) -> dict[str, Any]:
    return asdict(result)


def summary(rounds: list[dict[str, tuple[SliceResult, ...]]]) -> None:
    """Each slice's PR-AUC, replaced vs retrained, and the mean difference over rounds with a t-interval."""
    print(f"\nover {len(rounds)} rounds: PR-AUC of the model replaced vs the retrain, per slice (mean)")
    columns = ("slice", "retrain", "replaced", "retrain", "difference [95% t-interval]", "judged")
    print(f"{columns[0]:<20} {columns[1]:<22} {columns[2]:>8} {columns[3]:>8} {columns[4]:>30} {columns[5]}")
    names = [result.name for result in rounds[0][KEPT]]
    for name in names:
        for kind in (KEPT, ALL):
            found = [next(r for r in each[kind] if r.name == name) for each in rounds]
            pairs = [
                (r.champion_pr_auc, r.challenger_pr_auc)
                for r in found
                if r.champion_pr_auc is not None and r.challenger_pr_auc is not None
            ]
            if not pairs:
                print(f"{name:<20} {kind:<22} {'-':>8} {'-':>8} {'no rows':>30}")
                continue
            diffs = [after - before for before, after in pairs]
            mean = statistics.fmean(diffs)
            half = (
                float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
                if len(diffs) > 1
                else float("nan")
            )
            replaced = statistics.fmean(before for before, _ in pairs)
            retrained = statistics.fmean(after for _, after in pairs)
            judged = f"{sum(r.pr_auc_difference is not None for r in found)}/{len(found)}"
            interval = f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"
            print(f"{name:<20} {kind:<22} {replaced:>8.3f} {retrained:>8.3f} {interval:>30} {judged}")
    if len(rounds) < 5:
        print("fewer than 5 rounds: figures, no verdict (the statistics protocol asks for at least 5)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder in the original CSV layout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as state:
        rounds = [one_round(args, index, Path(state)) for index in range(args.rounds)]
    summary(rounds)


if __name__ == "__main__":
    main()
