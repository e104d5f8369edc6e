"""A synthetic sample calibrated on the original challenge data (profiles in ``reggaeton.calibration``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reggaeton.calibration import OTHER, REGGAETON, REGGAETON_PRIOR, ClassProfile
from reggaeton.schema import TARGET


def generate(
    rows: int,
    seed: int,
    prior: float = REGGAETON_PRIOR,
    reggaeton: ClassProfile = REGGAETON,
    other: ClassProfile = OTHER,
) -> pd.DataFrame:
    """A labelled synthetic sample with exactly ``round(rows * prior)`` reggaeton songs (at least 2).

    Args:
        rows: Total number of songs.
        seed: Seed of the random generator; the same seed gives the same frame.
        prior: Share of reggaeton songs.
        reggaeton: Profile of the positive class (a drift scenario can pass another one).
        other: Profile of the negative class.
    """
    rng = np.random.default_rng(seed)
    positives = max(2, round(rows * prior))
    frame = pd.concat(
        [
            reggaeton.sample(positives, rng).assign(**{TARGET: 1}),
            other.sample(rows - positives, rng).assign(**{TARGET: 0}),
        ],
        ignore_index=True,
    )
    order = rng.permutation(len(frame))
    return frame.iloc[order].reset_index(drop=True)
