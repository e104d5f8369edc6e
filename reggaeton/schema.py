"""The feature schema: the one definition of names, types and valid ranges used everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:  # pandas is imported where a frame is validated: the API server starts without it
    import pandas as pd


@dataclass(frozen=True)
class Feature:
    """One model input with its valid closed range (``exclusive_min`` makes the lower bound open)."""

    name: str
    minimum: float
    maximum: float
    description: str
    exclusive_min: bool = False

    def range_text(self) -> str:
        """The range in words, for error messages."""
        low = "(" if self.exclusive_min else "["
        return f"{low}{self.minimum:g}, {self.maximum:g}]"

    def outside(self, values: np.ndarray) -> np.ndarray:
        """Which values lie outside the range (NaN is not outside: it is missing, said apart)."""
        low = values <= self.minimum if self.exclusive_min else values < self.minimum
        return np.asarray(low | (values > self.maximum))


FEATURES: Final[tuple[Feature, ...]] = (
    Feature("danceability", 0.0, 1.0, "How suitable the track is for dancing (0..1)."),
    Feature("energy", 0.0, 1.0, "Perceived intensity and activity (0..1)."),
    Feature("speechiness", 0.0, 1.0, "Presence of spoken words (0..1)."),
    Feature("acousticness", 0.0, 1.0, "Confidence the track is acoustic (0..1)."),
    Feature("valence", 0.0, 1.0, "Musical positiveness (0..1)."),
    Feature("tempo", 0.0, 300.0, "Estimated tempo in beats per minute.", exclusive_min=True),
    Feature("loudness", -60.0, 0.0, "Overall loudness in decibels (Spotify's range -60..0)."),
)
FEATURE_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in FEATURES)
FEATURES_BY_NAME: Final[dict[str, Feature]] = {f.name: f for f in FEATURES}
TARGET: Final = "is_reggaeton"
# Output columns shared by the reference set, the prediction log and monitoring.
PROBABILITY: Final = "probability"
PREDICTION: Final = "prediction"
# Row provenance, carried by training data and the reference set (the gate's slices read it): where a
# labelled row came from, the data source (a folder or the synthetic sample) or production traffic with
# its feedback label, and when it was observed (a traffic row's prediction time, UTC; empty for base rows).
SOURCE: Final = "source"
BASE: Final = "base"
TRAFFIC: Final = "traffic"
SOURCES: Final = (BASE, TRAFFIC)
OBSERVED_AT: Final = "observed_at"

# Songs from the original challenge, used as API examples and smoke checks.
EXAMPLE_SONGS: Final[tuple[dict[str, float], ...]] = (
    {
        "danceability": 0.826,
        "energy": 0.704,
        "speechiness": 0.117,
        "acousticness": 0.189,
        "valence": 0.741,
        "tempo": 94.013,
        "loudness": -7.527,
    },
    {
        "danceability": 0.65,
        "energy": 0.884,
        "speechiness": 0.0326,
        "acousticness": 0.0482,
        "valence": 0.377,
        "tempo": 125.998,
        "loudness": -3.557,
    },
)
# The challenge's own request example: loudness 125.513 dB is out of range and must be refused.
INVALID_EXAMPLE_SONG: Final[dict[str, float]] = {**EXAMPLE_SONGS[0], "loudness": 125.513}


class SchemaError(ValueError):
    """A data frame or record that does not satisfy the feature schema."""

    def __init__(self, source: str, message: str, column: str | None = None, rows: int | None = None):
        self.source = source
        self.column = column
        self.rows = rows
        where = f" column '{column}'" if column else ""
        count = f" ({rows} row{'s' if rows != 1 else ''})" if rows is not None else ""
        super().__init__(f"{source}:{where} {message}{count}")


def validate_frame(frame: pd.DataFrame, source: str, *, require_target: bool = False) -> pd.DataFrame:
    """Validate a frame against the schema and return its feature (and target) columns as float/int.

    Args:
        frame: Rows to check; extra columns are ignored.
        source: What the frame came from (a file name), used in error messages.
        require_target: Also require a binary target column with both classes present.

    Raises:
        SchemaError: naming the source, the column and how many rows are wrong.
    """
    import pandas as pd

    if frame.empty:
        raise SchemaError(source, "no rows", rows=0)
    columns = list(FEATURE_NAMES) + ([TARGET] if require_target else [])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(source, f"missing required column(s): {', '.join(missing)}", column=missing[0])
    out = pd.DataFrame(index=frame.index)
    for feature in FEATURES:
        raw = frame[feature.name]
        numeric = pd.to_numeric(raw, errors="coerce").astype("float64")
        bad_type = numeric.isna() & raw.notna()
        if bad_type.any():
            raise SchemaError(source, "non-numeric values", column=feature.name, rows=int(bad_type.sum()))
        values = numeric.to_numpy()
        not_finite = ~np.isfinite(values)
        if not_finite.any():
            raise SchemaError(
                source, "missing or infinite values", column=feature.name, rows=int(not_finite.sum())
            )
        outside = feature.outside(values)
        if outside.any():
            raise SchemaError(
                source, f"values outside {feature.range_text()}", column=feature.name, rows=int(outside.sum())
            )
        out[feature.name] = values
    if require_target:
        target = pd.to_numeric(frame[TARGET], errors="coerce")
        if target.isna().any() or not target.isin([0, 1]).all():
            bad = int((target.isna() | ~target.isin([0, 1])).sum())
            raise SchemaError(source, "target must be 0 or 1", column=TARGET, rows=bad)
        if target.nunique() < 2:
            raise SchemaError(source, "only one class present; need both", column=TARGET, rows=len(target))
        out[TARGET] = target.astype("int64")
    return out


# Why a value breaks the schema, row by row (``row_problems``): one code per row and feature.
VALID: Final = 0
MISSING: Final = 1  # no value: an empty cell, a null, NaN
NOT_A_NUMBER: Final = 2  # text that does not read as a number
NOT_FINITE: Final = 3  # +-inf
OUT_OF_RANGE: Final = 4


def row_problems(
    columns: Mapping[str, np.ndarray], not_numbers: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """Every row's problem with every feature, without stopping at the first (the batch scorer's check).

    Args:
        columns: Each feature's values as floats, NaN where there is none (an empty cell, a null).
        not_numbers: Per feature, the rows whose value was text that does not read as a number (their
            entry in ``columns`` is NaN); a feature left out has none.

    Returns:
        A (rows, features) array of codes, features in schema order: ``VALID`` or the problem.
    """
    rows = len(columns[FEATURES[0].name])
    codes = np.zeros((rows, len(FEATURES)), dtype=np.uint8)
    for index, feature in enumerate(FEATURES):
        values = columns[feature.name]
        code = codes[:, index]
        code[np.isnan(values)] = MISSING
        if not_numbers is not None and feature.name in not_numbers:
            code[not_numbers[feature.name]] = NOT_A_NUMBER
        code[np.isinf(values)] = NOT_FINITE
        code[feature.outside(values) & np.isfinite(values)] = OUT_OF_RANGE
    return codes


def problem_text(codes: np.ndarray, values: np.ndarray) -> str:
    """One row's problems in words, each naming its field, e.g. ``loudness 125.513 is outside [-60, 0]``.

    Args:
        codes: The row's codes (one row of :func:`row_problems`).
        values: The row's feature values in schema order.
    """
    parts = []
    for feature, code, value in zip(FEATURES, codes.tolist(), values.tolist(), strict=True):
        if code == MISSING:
            parts.append(f"{feature.name} is missing")
        elif code == NOT_A_NUMBER:
            parts.append(f"{feature.name} is not a number")
        elif code == NOT_FINITE:
            parts.append(f"{feature.name} {value:g} is not finite")
        elif code == OUT_OF_RANGE:
            parts.append(f"{feature.name} {value:g} is outside {feature.range_text()}")
    return "; ".join(parts)
