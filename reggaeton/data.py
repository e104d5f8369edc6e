"""Training data: the original CSV layout from a folder, or the calibrated synthetic sample."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from reggaeton import synthetic
from reggaeton.schema import FEATURE_NAMES, TARGET, SchemaError, validate_frame

logger = logging.getLogger(__name__)

REGGAETON_FILE = "data_reggaeton.csv"
OTHER_FILE = "data_todotipo.csv"


@dataclass(frozen=True)
class Dataset:
    """Validated labelled songs and where they came from."""

    frame: pd.DataFrame  # the seven features plus the target, natural class prior
    source: str
    dropped_rows: int = 0

    @property
    def X(self) -> pd.DataFrame:
        """Feature columns in schema order."""
        return self.frame[list(FEATURE_NAMES)]

    @property
    def y(self) -> pd.Series:
        """Binary target."""
        return self.frame[TARGET]

    @property
    def content_hash(self) -> str:
        """SHA-256 of the feature and target values (independent of file names and row labels)."""
        return frame_hash(self.frame[[*FEATURE_NAMES, TARGET]])

    def summary(self) -> dict[str, int | str]:
        """Counts for logs and run parameters."""
        return {
            "source": self.source,
            "rows": len(self.frame),
            "positives": int(self.y.sum()),
            "dropped_rows": self.dropped_rows,
            "hash": self.content_hash,
        }


def frame_hash(frame: pd.DataFrame) -> str:
    """A stable content hash of a frame's values and column names."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _read_labelled_csv(path: Path, label: int) -> tuple[pd.DataFrame, int]:
    if not path.is_file():
        raise SchemaError(str(path), f"file not found (expected the original layout: {path.name})")
    try:
        raw = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise SchemaError(str(path), f"not a readable CSV file: {exc}", rows=0) from exc
    present = [c for c in FEATURE_NAMES if c in raw.columns]
    # Rows with a missing value (not a malformed one) are dropped and counted.
    missing = raw[present].isna().any(axis=1) if present else pd.Series(False, index=raw.index)
    dropped = int(missing.sum())
    kept = raw.loc[~missing]
    if dropped:
        logger.warning("%s: dropped %d row(s) with missing feature values", path.name, dropped)
    frame = validate_frame(kept, str(path))
    frame[TARGET] = label
    return frame, dropped


def load_folder(folder: Path) -> Dataset:
    """Load the original challenge layout: ``data_reggaeton.csv`` (positives) and ``data_todotipo.csv``.

    Raises:
        SchemaError: a missing, empty or malformed file, naming the file, column and row count.
    """
    folder = Path(folder)
    positives, dropped_pos = _read_labelled_csv(folder / REGGAETON_FILE, 1)
    negatives, dropped_neg = _read_labelled_csv(folder / OTHER_FILE, 0)
    frame = pd.concat([positives, negatives], ignore_index=True)
    frame = validate_frame(frame, str(folder), require_target=True)
    return Dataset(frame=frame, source=str(folder.resolve()), dropped_rows=dropped_pos + dropped_neg)


def synthetic_dataset(rows: int, seed: int) -> Dataset:
    """The calibrated synthetic sample (see ``reggaeton.synthetic``)."""
    frame = validate_frame(synthetic.generate(rows, seed), "synthetic", require_target=True)
    return Dataset(frame=frame, source=f"synthetic(rows={rows}, seed={seed})")


def load_dataset(folder: Path | None, rows: int, seed: int) -> Dataset:
    """The configured data source: a folder in the original layout, else the synthetic sample."""
    return load_folder(folder) if folder is not None else synthetic_dataset(rows, seed)


def with_extra_rows(dataset: Dataset, extra: pd.DataFrame | None, source: str) -> Dataset:
    """The dataset plus extra labelled rows (e.g. production traffic with feedback), validated.

    Raises:
        SchemaError: the extra rows break the schema (named by ``source``).
    """
    if extra is None or extra.empty:
        return dataset
    features = validate_frame(extra, source)
    target = pd.to_numeric(extra[TARGET], errors="coerce") if TARGET in extra.columns else None
    if target is None or not target.isin([0, 1]).all():
        bad = len(extra) if target is None else int((~target.isin([0, 1])).sum())
        raise SchemaError(source, "target must be 0 or 1", column=TARGET, rows=bad)
    features[TARGET] = target.astype("int64").to_numpy()
    combined = pd.concat([dataset.frame, features], ignore_index=True)
    name = f"{dataset.source} + {source}({len(features)} rows)"
    return Dataset(
        frame=validate_frame(combined, name, require_target=True),
        source=name,
        dropped_rows=dataset.dropped_rows,
    )


@dataclass(frozen=True)
class Split:
    """Train and held-out parts, both with the natural class prior."""

    train: pd.DataFrame
    holdout: pd.DataFrame


def split(dataset: Dataset, holdout_fraction: float, seed: int) -> Split:
    """Stratified train/held-out split."""
    train, holdout = train_test_split(
        dataset.frame, test_size=holdout_fraction, stratify=dataset.y, random_state=seed
    )
    return Split(train=train.reset_index(drop=True), holdout=holdout.reset_index(drop=True))


def features_array(frame: pd.DataFrame) -> np.ndarray:
    """Features as a float64 array in schema order (the model's input everywhere)."""
    return frame[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
