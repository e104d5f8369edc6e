"""Bootstrap intervals: replicates computed at once equal scikit-learn's metric called per replicate."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from reggaeton import metrics
from reggaeton.metrics import SCORE_METRICS, bootstrap_interval, paired_bootstrap_difference


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
