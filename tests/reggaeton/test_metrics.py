"""Bootstrap intervals: replicates computed at once equal scikit-learn's metric called per replicate."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from reggaeton import metrics
from reggaeton.metrics import (
    SCORE_METRICS,
    bootstrap_interval,
    mean_difference_interval,
    paired_bootstrap_difference,
)


def _per_replicate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the module score every replicate with one scikit-learn call, as it did before batching."""
    monkeypatch.setattr(metrics, "_ROWWISE", {})


@pytest.mark.parametrize("name", sorted(SCORE_METRICS))
@pytest.mark.parametrize("decimals", [2, 6])  # many tied scores, few
def test_batched_replicates_equal_one_scikit_learn_call_per_replicate(
    name: str, decimals: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(11)
    y = (rng.random(700) < 0.05).astype(int)
    proba_a = np.round(np.clip(0.3 * y + rng.random(700) * 0.7, 0, 1), decimals)
    proba_b = np.round(rng.random(700), decimals)
    metric = SCORE_METRICS[name]
    batched = bootstrap_interval(y, proba_a, metric, 300, seed=5)
    paired = paired_bootstrap_difference(y, proba_a, proba_b, metric, 300, seed=5)
    _per_replicate(monkeypatch)
    expected = bootstrap_interval(y, proba_a, metric, 300, seed=5)
    expected_paired = paired_bootstrap_difference(y, proba_a, proba_b, metric, 300, seed=5)
    assert astuple(batched) == pytest.approx(astuple(expected), abs=1e-12)
    assert astuple(paired) == pytest.approx(astuple(expected_paired), abs=1e-12)


def _runs(rng: np.random.Generator, y: np.ndarray, signal: float, count: int) -> list[np.ndarray]:
    """``count`` models' probabilities: ``signal`` of the label plus noise of their own."""
    return [np.clip(signal * y + rng.random(len(y)) * (1 - signal), 0, 1) for _ in range(count)]


def test_mean_difference_of_runs_is_paired_on_rows_and_resamples_the_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(600) < 0.04).astype(int)
    weak, strong = _runs(rng, y, 0.1, 3), _runs(rng, y, 0.4, 2)
    metric = SCORE_METRICS["pr_auc"]
    gain = mean_difference_interval(y, weak, strong, metric, 400, seed=2)
    expected = np.mean([metric(y, p) for p in strong]) - np.mean([metric(y, p) for p in weak])
    assert gain.estimate == pytest.approx(expected, abs=1e-12)
    assert 0 < gain.low < gain.estimate < gain.high
    # One model a side: the paired difference; one model against itself differs by zero in every replicate.
    one = mean_difference_interval(y, weak[:1], strong[:1], metric, 400, seed=2)
    replicates_a, replicates_b = metrics._replicates(y, (weak[0], strong[0]), metric, 400, seed=2)
    plain = (
        metric(y, strong[0]) - metric(y, weak[0]),
        *np.quantile(replicates_b - replicates_a, [0.025, 0.975]),
    )
    assert astuple(one) == pytest.approx(plain, abs=1e-12)
    assert one == paired_bootstrap_difference(y, weak[0], strong[0], metric, 400, seed=2)
    assert astuple(mean_difference_interval(y, weak[:1], weak[:1], metric, 400, seed=2)) == (0.0, 0.0, 0.0)
    # Runs that disagree widen the interval: the spread between runs is part of it.
    mixed = mean_difference_interval(y, weak, [strong[0], weak[0]], metric, 400, seed=2)
    paired_only = paired_bootstrap_difference(y, weak[1], (strong[0] + weak[0]) / 2, metric, 400, seed=2)
    assert mixed.high - mixed.low > 1.5 * (paired_only.high - paired_only.low)
    _per_replicate(monkeypatch)
    assert astuple(mean_difference_interval(y, weak, strong, metric, 400, seed=2)) == pytest.approx(
        astuple(gain), abs=1e-12
    )
    with pytest.raises(ValueError, match="at least one"):
        mean_difference_interval(y, [], strong, metric, 100, seed=2)
