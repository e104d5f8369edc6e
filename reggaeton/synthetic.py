"""A synthetic sample calibrated on the original challenge data (per-class marginals and correlations).

Each class is a Gaussian copula: correlated standard normals (from the class's Spearman correlations)
mapped through the class's empirical quantile function (21 quantiles, min to max) of every feature.
That keeps the means, spreads, ranges and rank correlations of the original 70 reggaeton and 2,222
other songs, and the 3 % class prior, without shipping the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from reggaeton.schema import FEATURE_NAMES, TARGET

# Share of reggaeton songs in the original data (70 of 2,292 usable rows).
REGGAETON_PRIOR = 70 / 2292


@dataclass(frozen=True)
class ClassProfile:
    """Quantile functions (0 %, 5 %, ..., 100 %) per feature and the Spearman correlation matrix."""

    quantiles: dict[str, tuple[float, ...]]
    spearman: tuple[tuple[float, ...], ...]

    def sample(self, n: int, rng: np.random.Generator) -> pd.DataFrame:
        """Draw ``n`` rows from the copula."""
        rho = np.asarray(self.spearman)
        # Spearman's rho of a Gaussian copula -> Pearson correlation of the latent normals.
        latent_corr = 2.0 * np.sin(np.pi * rho / 6.0)
        latent = rng.multivariate_normal(np.zeros(len(FEATURE_NAMES)), latent_corr, size=n, method="eigh")
        uniforms = stats.norm.cdf(latent)
        levels = np.linspace(0.0, 1.0, 21)
        columns = {
            name: np.interp(uniforms[:, i], levels, np.asarray(self.quantiles[name]))
            for i, name in enumerate(FEATURE_NAMES)
        }
        return pd.DataFrame(columns)


REGGAETON = ClassProfile(
    quantiles={
        "danceability": (
            0.503,
            0.6344,
            0.677,
            0.69775,
            0.7274,
            0.74325,
            0.753,
            0.7659,
            0.775,
            0.78705,
            0.792,
            0.79595,
            0.8022,
            0.808,
            0.8153,
            0.8275,
            0.8402,
            0.84495,
            0.8525,
            0.8688,
            0.944,
        ),
        "energy": (
            0.533,
            0.61005,
            0.6654,
            0.68005,
            0.692,
            0.70025,
            0.7234,
            0.73165,
            0.7462,
            0.76825,
            0.79,
            0.80195,
            0.8128,
            0.82385,
            0.85,
            0.8635,
            0.8742,
            0.87995,
            0.9005,
            0.91785,
            0.946,
        ),
        "speechiness": (
            0.032,
            0.04066,
            0.04714,
            0.054585,
            0.05936,
            0.064375,
            0.07163,
            0.0749,
            0.08112,
            0.08548,
            0.0906,
            0.09987,
            0.1084,
            0.12285,
            0.1406,
            0.161,
            0.1838,
            0.22295,
            0.2458,
            0.2675,
            0.308,
        ),
        "acousticness": (
            0.00165,
            0.00778,
            0.01673,
            0.029355,
            0.03984,
            0.056025,
            0.06921,
            0.08185,
            0.09578,
            0.10105,
            0.113,
            0.1485,
            0.1714,
            0.18185,
            0.2149,
            0.2435,
            0.2746,
            0.29765,
            0.3293,
            0.4088,
            0.563,
        ),
        "valence": (
            0.354,
            0.43175,
            0.4899,
            0.524,
            0.5628,
            0.58225,
            0.6314,
            0.66865,
            0.6928,
            0.71605,
            0.7225,
            0.7407,
            0.7546,
            0.77095,
            0.7972,
            0.83025,
            0.8488,
            0.87165,
            0.8776,
            0.89855,
            0.966,
        ),
        "tempo": (
            84.012,
            88.9101,
            91.7685,
            92.0099,
            92.9784,
            93.9935,
            94.0151,
            94.3533,
            94.991,
            95.0072,
            95.0185,
            95.0278,
            95.0486,
            96.0042,
            97.0127,
            102.278,
            107.069,
            109.345,
            134.309,
            181.883,
            214.058,
        ),
        "loudness": (
            -13.268,
            -11.7706,
            -8.5304,
            -7.62745,
            -7.3724,
            -7.12875,
            -6.6669,
            -6.46215,
            -6.3354,
            -6.1497,
            -6.031,
            -5.89965,
            -5.785,
            -5.53045,
            -5.1798,
            -4.95975,
            -4.9202,
            -4.55805,
            -4.297,
            -3.7436,
            -0.262,
        ),
    },
    spearman=(
        (1.00, -0.12, 0.05, 0.09, 0.02, 0.09, -0.08),
        (-0.12, 1.00, -0.07, 0.03, 0.24, -0.07, 0.62),
        (0.05, -0.07, 1.00, -0.01, 0.04, 0.17, -0.05),
        (0.09, 0.03, -0.01, 1.00, 0.08, -0.38, 0.20),
        (0.02, 0.24, 0.04, 0.08, 1.00, 0.13, 0.25),
        (0.09, -0.07, 0.17, -0.38, 0.13, 1.00, -0.19),
        (-0.08, 0.62, -0.05, 0.20, 0.25, -0.19, 1.00),
    ),
)

OTHER = ClassProfile(
    quantiles={
        "danceability": (
            0.0627,
            0.27905,
            0.3331,
            0.375,
            0.415,
            0.456,
            0.486,
            0.514,
            0.538,
            0.557,
            0.579,
            0.598,
            0.62,
            0.64165,
            0.667,
            0.69075,
            0.7158,
            0.743,
            0.7809,
            0.814,
            0.942,
        ),
        "energy": (
            0.00181,
            0.04252,
            0.15,
            0.26215,
            0.347,
            0.40625,
            0.467,
            0.52,
            0.571,
            0.629,
            0.671,
            0.71255,
            0.75,
            0.78965,
            0.818,
            0.847,
            0.8738,
            0.902,
            0.931,
            0.95995,
            0.998,
        ),
        "speechiness": (
            0.0231,
            0.0282,
            0.0305,
            0.0322,
            0.03372,
            0.0355,
            0.037,
            0.039,
            0.041,
            0.0433,
            0.0457,
            0.0485,
            0.0527,
            0.057665,
            0.06267,
            0.0699,
            0.08096,
            0.09937,
            0.127,
            0.183,
            0.668,
        ),
        "acousticness": (
            1.52e-06,
            0.0002851,
            0.00178,
            0.0046735,
            0.0123,
            0.021275,
            0.03523,
            0.05807,
            0.08572,
            0.12445,
            0.189,
            0.255,
            0.3446,
            0.44665,
            0.554,
            0.66725,
            0.7776,
            0.88985,
            0.954,
            0.991,
            0.996,
        ),
        "valence": (
            0.0279,
            0.07904,
            0.139,
            0.192,
            0.247,
            0.298,
            0.349,
            0.4037,
            0.4474,
            0.498,
            0.5385,
            0.584,
            0.6306,
            0.681,
            0.724,
            0.767,
            0.822,
            0.865,
            0.903,
            0.942,
            0.982,
        ),
        "tempo": (
            33.579,
            76.7147,
            83.231,
            89.9905,
            93.655,
            97.4118,
            100.057,
            104.036,
            108.053,
            113.278,
            117.947,
            120.937,
            124.028,
            126.276,
            129.533,
            133.873,
            139.763,
            146.016,
            158.24,
            173.937,
            211.893,
        ),
        "loudness": (
            -42.117,
            -23.4914,
            -17.127,
            -14.1337,
            -12.3796,
            -11.316,
            -10.6595,
            -9.8867,
            -9.2316,
            -8.6192,
            -8.0175,
            -7.556,
            -7.0468,
            -6.6454,
            -6.1965,
            -5.699,
            -5.1726,
            -4.6239,
            -4.0775,
            -3.37805,
            -0.282,
        ),
    },
    spearman=(
        (1.00, 0.11, 0.08, -0.07, 0.52, -0.09, 0.20),
        (0.11, 1.00, 0.20, -0.71, 0.30, 0.26, 0.78),
        (0.08, 0.20, 1.00, -0.11, 0.01, 0.07, 0.08),
        (-0.07, -0.71, -0.11, 1.00, -0.13, -0.29, -0.55),
        (0.52, 0.30, 0.01, -0.13, 1.00, 0.04, 0.26),
        (-0.09, 0.26, 0.07, -0.29, 0.04, 1.00, 0.16),
        (0.20, 0.78, 0.08, -0.55, 0.26, 0.16, 1.00),
    ),
)


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
