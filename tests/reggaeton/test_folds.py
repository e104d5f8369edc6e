"""The folds' shared preparation: pre-binned arrays equal to what the estimator's own binner makes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble._hist_gradient_boosting.binning import _BinMapper
from sklearn.utils.class_weight import compute_sample_weight

from reggaeton.folds import _bin_edges


@pytest.mark.parametrize("max_bins", [255, 16])
def test_bin_edges_are_the_estimators_own_for_many_few_and_one_distinct_values(max_bins: int) -> None:
    rng = np.random.default_rng(3)
    rows = 1_400
    X = np.column_stack(
        [
            rng.normal(size=rows),  # many distinct values: weighted percentiles
            rng.integers(0, 12, size=rows).astype(float),  # few: midpoints
            np.full(rows, 2.5),  # one: no edge
            np.round(rng.exponential(size=rows), 2),  # ties across both classes
        ]
    )
    y = (rng.random(rows) < 0.03).astype(int)
    weights = compute_sample_weight("balanced", y)
    mapper = _BinMapper(n_bins=max_bins + 1, n_threads=1).fit(X, sample_weight=weights)
    edges = _bin_edges(X, weights, max_bins)
    assert len(edges) == X.shape[1]
    for ours, theirs in zip(edges, mapper.bin_thresholds_, strict=True):
        np.testing.assert_array_equal(ours, theirs)
