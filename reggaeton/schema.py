"""The feature schema: the one definition of names, types and valid ranges used everywhere."""

from __future__ import annotations

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
        low = values <= feature.minimum if feature.exclusive_min else values < feature.minimum
        outside = low | (values > feature.maximum)
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
