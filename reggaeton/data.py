"""Training data: the original CSV layout from a folder, or the calibrated synthetic sample, plus traffic.

Every row carries its provenance (``schema.SOURCE``: base data or traffic, and ``schema.OBSERVED_AT``),
and its side of the train/held-out split is decided by a hash of its feature values alone
(``held_out``): the same song is held out by every version that has it, so any two versions share
held-out rows that neither trained on, and the gate can score both on them without a re-split.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from reggaeton import synthetic
from reggaeton.schema import (
    BASE,
    FEATURE_NAMES,
    OBSERVED_AT,
    SOURCE,
    TARGET,
    TRAFFIC,
    SchemaError,
    validate_frame,
)

logger = logging.getLogger(__name__)

REGGAETON_FILE = "data_reggaeton.csv"
OTHER_FILE = "data_todotipo.csv"


@dataclass(frozen=True)
class Dataset:
    """Validated labelled songs and where they came from."""

    frame: pd.DataFrame  # the seven features, the target (natural class prior) and the provenance
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
        traffic = self.frame[SOURCE] == TRAFFIC
        return {
            "source": self.source,
            "rows": len(self.frame),
            "positives": int(self.y.sum()),
            "traffic_rows": int(traffic.sum()),
            "traffic_positives": int(self.y[traffic].sum()),
            "dropped_rows": self.dropped_rows,
            "hash": self.content_hash,
        }


def with_provenance(frame: pd.DataFrame, source: str, observed_at: Any = None) -> pd.DataFrame:
    """The frame with its provenance columns set: ``SOURCE`` and ``OBSERVED_AT`` (UTC; None: unknown)."""
    out = frame.copy()
    out[SOURCE] = source
    out[OBSERVED_AT] = pd.to_datetime(
        pd.Series(observed_at, index=frame.index) if np.ndim(observed_at) == 0 else observed_at, utc=True
    )
    return out


def provenance_or_base(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with provenance columns, base data without a time where they are missing.

    Reference sets written before rows carried their provenance hold only held-out base data or traffic
    the version saw alike; without a record they count as base data.
    """
    if SOURCE in frame.columns and OBSERVED_AT in frame.columns:
        out = frame.copy()
        out[OBSERVED_AT] = pd.to_datetime(out[OBSERVED_AT], utc=True)
        return out
    return with_provenance(frame, BASE)


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
    frame = with_provenance(validate_frame(frame, str(folder), require_target=True), BASE)
    return Dataset(frame=frame, source=str(folder.resolve()), dropped_rows=dropped_pos + dropped_neg)


def synthetic_dataset(rows: int, seed: int) -> Dataset:
    """The calibrated synthetic sample (see ``reggaeton.synthetic``)."""
    frame = validate_frame(synthetic.generate(rows, seed), "synthetic", require_target=True)
    return Dataset(frame=with_provenance(frame, BASE), source=f"synthetic(rows={rows}, seed={seed})")


def load_dataset(folder: Path | None, rows: int, seed: int) -> Dataset:
    """The configured data source: a folder in the original layout, else the synthetic sample."""
    return load_folder(folder) if folder is not None else synthetic_dataset(rows, seed)


def labelled_rows(extra: pd.DataFrame, source: str) -> pd.DataFrame:
    """Extra labelled rows (e.g. traffic with feedback) validated, as traffic rows with their time.

    ``OBSERVED_AT`` is kept when ``extra`` has it (a prediction's time), else left empty.

    Raises:
        SchemaError: the rows break the schema (named by ``source``).
    """
    features = validate_frame(extra, source)
    target = pd.to_numeric(extra[TARGET], errors="coerce") if TARGET in extra.columns else None
    if target is None or not target.isin([0, 1]).all():
        bad = len(extra) if target is None else int((~target.isin([0, 1])).sum())
        raise SchemaError(source, "target must be 0 or 1", column=TARGET, rows=bad)
    features[TARGET] = target.astype("int64").to_numpy()
    observed = extra[OBSERVED_AT].to_numpy() if OBSERVED_AT in extra.columns else None
    return with_provenance(features, TRAFFIC, observed)


def with_extra_rows(dataset: Dataset, extra: pd.DataFrame | None, source: str) -> Dataset:
    """The dataset plus extra labelled rows (e.g. production traffic with feedback), validated.

    Raises:
        SchemaError: the extra rows break the schema (named by ``source``).
    """
    if extra is None or extra.empty:
        return dataset
    rows = labelled_rows(extra, source)
    combined = pd.concat([dataset.frame, rows], ignore_index=True)
    name = f"{dataset.source} + {source}({len(rows)} rows)"
    checked = validate_frame(combined, name, require_target=True)
    checked[[SOURCE, OBSERVED_AT]] = combined[[SOURCE, OBSERVED_AT]]
    return Dataset(frame=checked, source=name, dropped_rows=dataset.dropped_rows)


# --- how much of a retrain's data is base data ------------------------------------------------------


def base_rows_for_share(traffic_rows: int, base_share: float) -> int:
    """Base rows needed so that they are at least ``base_share`` of base plus ``traffic_rows``."""
    if base_share <= 0 or traffic_rows <= 0:
        return 0
    return math.ceil(traffic_rows * base_share / (1 - base_share))


def traffic_rows_for_share(base_rows: int, base_share: float) -> int | None:
    """Traffic rows that keep ``base_rows`` at least ``base_share`` of the data (None: no limit)."""
    if base_share <= 0:
        return None
    return math.floor(base_rows * (1 - base_share) / base_share)


def keep_rows(frame: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """At most ``rows`` rows of ``frame``, chosen by their row key (the same rows on every call), in order.

    A reproducible sample that does not depend on when rows arrived: the same songs are kept as
    traffic grows, and none is favoured by its time.
    """
    if rows is None or len(frame) <= rows:
        return frame
    order = np.argsort(row_keys(frame, f"keep:{seed}"), kind="stable")
    return frame.iloc[np.sort(order[:rows])]


# --- the stable split -------------------------------------------------------------------------------

# Held-out membership: the first 8 bytes of SHA-256(salt, the row's seven feature values as
# little-endian float64 in schema order), read as an unsigned integer, below ``fraction * 2**64``.
_UNIT: Final = float(2**64)


def row_keys(frame: pd.DataFrame, salt: str) -> np.ndarray:
    """A 64-bit key per row from its feature values alone (``-0.0`` counts as ``0.0``).

    The same song gets the same key whatever its source, its label or the rows around it.
    """
    values = np.ascontiguousarray(frame[list(FEATURE_NAMES)].to_numpy(dtype="<f8") + 0.0)
    prefix = hashlib.sha256(salt.encode())
    keys = np.empty(len(values), dtype=np.uint64)
    for i, row in enumerate(values):
        digest = prefix.copy()
        digest.update(row.tobytes())
        keys[i] = int.from_bytes(digest.digest()[:8], "little")
    return keys


def split_salt(seed: int) -> str:
    """The salt of the stable split for a data seed (``data.seed``)."""
    return f"split:{seed}"


def held_out(frame: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Which rows are held out: their key (``row_keys``) falls in the lowest ``fraction`` of the range.

    Decided row by row, so the same song is held out in every version's data, and a larger fraction
    only adds rows to the held-out part.
    """
    return row_keys(frame, split_salt(seed)) < np.uint64(min(fraction * _UNIT, _UNIT - 1))


@dataclass(frozen=True)
class Split:
    """Train and held-out parts; the held-out part keeps the natural class prior (rows drawn by hash)."""

    train: pd.DataFrame
    holdout: pd.DataFrame


def split(dataset: Dataset, holdout_fraction: float, seed: int) -> Split:
    """The stable train/held-out split (``held_out``), with its class counts logged.

    Each class is held out at ``holdout_fraction`` in expectation (membership by hash, not by quota,
    so a song keeps its side whatever else the data holds): the held-out prior is the data's up to
    sampling noise, e.g. 17 +- 4 of 69 positives for 2,300 rows at 25 %.

    Raises:
        SchemaError: a part would lack a class (data too small for the fraction).
    """
    mask = held_out(dataset.frame, holdout_fraction, seed)
    train = dataset.frame.loc[~mask].reset_index(drop=True)
    holdout = dataset.frame.loc[mask].reset_index(drop=True)
    for name, part in (("train", train), ("held-out", holdout)):
        if part.empty or part[TARGET].nunique() < 2:
            raise SchemaError(
                dataset.source, f"the {name} part of the split lacks a class", column=TARGET, rows=len(part)
            )
    logger.info(
        "split: train %d rows (%d positives), held out %d rows (%d positives)",
        len(train),
        int(train[TARGET].sum()),
        len(holdout),
        int(holdout[TARGET].sum()),
    )
    return Split(train=train, holdout=holdout)


def features_array(frame: pd.DataFrame) -> np.ndarray:
    """Features as a float64 array in schema order (the model's input everywhere)."""
    return frame[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
