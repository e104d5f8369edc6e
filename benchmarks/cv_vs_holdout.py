"""Diagnostic: does a study's CV PR-AUC rank configurations the way the held-out PR-AUC does?

For each sampler seed, runs one 50-trial study on the original data's training part (no pruning, one
trial at a time: reproducible), refits every complete trial on the training part, scores it on the
held-out part, and prints the rank correlation of CV and held-out PR-AUC over all trials and over the
ten best by CV, with the held-out figures of those ten. A correlation near zero among the best trials
means no rule for choosing among them can make the tuned model's held-out PR-AUC reliably higher:
what decides it there is which held-out songs a model happens to rank well.

Usage: python benchmarks/cv_vs_holdout.py [--data FOLDER] [--trials N] SEED [SEED ...]
(default data: $REGGAETON_BENCH_DATA, else ../shared/data/reggaeton-2018 beside the repository).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import optuna
from bench_train import DEFAULT_DATA  # the same data as the training benchmark (run as a script)
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

from reggaeton import tuning
from reggaeton.data import features_array, load_folder, split
from reggaeton.schema import TARGET
from reggaeton.settings import Settings
from reggaeton.training import fit_pipeline

TOP = 10


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("REGGAETON_BENCH_DATA", DEFAULT_DATA))
    )
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("seeds", type=int, nargs="*", default=[1, 2, 3])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    settings = Settings()
    training = settings.training
    parts = split(load_folder(args.data), settings.data.holdout_fraction, settings.data.seed)
    X, y = features_array(parts.train), parts.train[TARGET].to_numpy()
    X_held, y_held = features_array(parts.holdout), parts.holdout[TARGET].to_numpy()
    print(
        f"cv-vs-holdout: {args.trials} trials per study, {len(parts.holdout)} held-out rows "
        f"({int(y_held.sum())} positives)"
    )
    for seed in args.seeds:
        storage = InMemoryStorage()
        tuning.tune(
            X, y, storage=storage, study_name="diagnostic", families=training.families,
            n_trials=args.trials, folds=training.cv_folds, repeats=training.cv_repeats,
            seed=training.seed, sampler_seed=seed, n_jobs=1, progress_bar=False, pruning=False,
        )  # fmt: skip
        study = optuna.load_study(study_name="diagnostic", storage=storage)
        scored = []
        for trial in study.trials:
            if trial.state != TrialState.COMPLETE or trial.value is None:
                continue
            family, params = tuning.trial_family_and_params(trial)
            pipeline = fit_pipeline(family, params, parts.train, training.seed)
            held_out = float(average_precision_score(y_held, pipeline.predict_proba(X_held)[:, 1]))
            scored.append((trial.value, held_out))
        scored.sort(key=lambda pair: -pair[0])
        top = scored[:TOP]
        every = spearmanr([cv for cv, _ in scored], [held for _, held in scored]).statistic
        best = spearmanr([cv for cv, _ in top], [held for _, held in top]).statistic
        print(
            f"  sampler seed {seed}: {len(scored)} complete trials; rank correlation of CV and held-out "
            f"PR-AUC: all {every:+.2f}, best {len(top)} by CV {best:+.2f}"
        )
        print("    best by CV (CV -> held-out): " + ", ".join(f"{cv:.3f}->{held:.3f}" for cv, held in top))
        helds = [held for _, held in top]
        print(
            f"    their held-out PR-AUC: median {statistics.median(helds):.3f}, range "
            f"{min(helds):.3f}-{max(helds):.3f}; the one a study picks: {top[0][1]:.3f}"
        )


if __name__ == "__main__":
    main()
