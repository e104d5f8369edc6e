"""Row provenance, the stable split and the slice rules, on plain frames."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from reggaeton import slices
from reggaeton.data import (
    base_rows_for_share,
    held_out,
    keep_rows,
    split,
    synthetic_dataset,
    traffic_rows_for_share,
    with_extra_rows,
)
from reggaeton.schema import BASE, FEATURE_NAMES, OBSERVED_AT, SOURCE, TARGET, TRAFFIC
from reggaeton.settings import Settings


def test_a_song_keeps_its_side_of_the_split_whatever_else_the_data_holds() -> None:
    base = synthetic_dataset(2300, seed=42)
    traffic = synthetic_dataset(3000, seed=7).frame.assign(
        **{OBSERVED_AT: pd.Timestamp("2026-12-01", tz="UTC")}
    )
    grown = with_extra_rows(base, traffic, "prediction-log")

    first, second = split(base, 0.25, seed=42), split(grown, 0.25, seed=42)

    features = list(FEATURE_NAMES)
    first_held = first.holdout[features].apply(tuple, axis=1)
    second_held = set(second.holdout[features].apply(tuple, axis=1))
    # Every base song held out by the first version is held out by the second: rows neither trained on.
    assert set(first_held) <= second_held
    assert not set(first.train[features].apply(tuple, axis=1)) & second_held
    # Membership does not depend on the label or on the row's source.
    relabelled = base.frame.assign(**{TARGET: 1 - base.frame[TARGET], SOURCE: TRAFFIC})
    assert np.array_equal(held_out(relabelled, 0.25, 42), held_out(base.frame, 0.25, 42))
    # A larger fraction only adds rows to the held-out part.
    assert not (held_out(base.frame, 0.25, 42) & ~held_out(base.frame, 0.3, 42)).any()


def test_held_out_part_keeps_the_natural_prior_and_the_provenance() -> None:
    base = synthetic_dataset(2300, seed=42)
    parts = split(base, 0.25, seed=42)
    positives, rows = int(base.y.sum()), len(base.frame)
    held_positives, held_rows = int(parts.holdout[TARGET].sum()), len(parts.holdout)
    # Binomial around a quarter of each class (17.5 +- 3.6 of 70 positives): within three sigmas.
    assert abs(held_rows - rows / 4) < 3 * np.sqrt(rows * 0.25 * 0.75)
    assert abs(held_positives - positives / 4) < 3 * np.sqrt(positives * 0.25 * 0.75)
    assert set(parts.holdout[SOURCE]) == {BASE} and parts.holdout[OBSERVED_AT].isna().all()


def test_traffic_rows_carry_their_source_and_time() -> None:
    base = synthetic_dataset(500, seed=1)
    when = pd.date_range("2026-12-01", periods=50, freq="min", tz="UTC")
    traffic = (
        synthetic_dataset(50, seed=2).frame.drop(columns=[SOURCE, OBSERVED_AT]).assign(**{OBSERVED_AT: when})
    )
    dataset = with_extra_rows(base, traffic, "prediction-log")
    added = dataset.frame.iloc[len(base.frame) :]
    assert (added[SOURCE] == TRAFFIC).all() and list(added[OBSERVED_AT]) == list(when)
    assert dataset.summary()["traffic_rows"] == 50


def test_base_share_sizes_the_base_data_or_the_traffic() -> None:
    assert base_rows_for_share(3000, 0.75) == 9000
    assert base_rows_for_share(3000, 0.0) == 0
    assert traffic_rows_for_share(2292, 0.75) == 764
    assert traffic_rows_for_share(2292, 0.0) is None
    frame = synthetic_dataset(1000, seed=3).frame
    kept = keep_rows(frame, 100, seed=42)
    assert len(kept) == 100 and kept.index.is_monotonic_increasing
    assert kept.equals(keep_rows(frame, 100, seed=42))  # the same rows every time


def _frame() -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            **{name: [0.5, 0.5, 0.5, 0.5] for name in FEATURE_NAMES},
            TARGET: [1, 0, 1, 0],
        }
    )
    rows["tempo"] = [90.0, 130.0, 100.0, 140.0]
    rows[SOURCE] = [BASE, BASE, TRAFFIC, TRAFFIC]
    rows[slices.ORIGIN] = [slices.HOLDOUT, slices.FRESH, slices.TRAFFIC, slices.TRAFFIC]
    rows[slices.CHAMPION_REFERENCE] = [1, 0, 0, 0]
    rows[OBSERVED_AT] = pd.to_datetime([None, None, "2026-11-01", "2026-12-01"], utc=True)
    return rows


def test_slice_rules_match_rows() -> None:
    frame = _frame()
    assert slices.matching_rows(frame, "tempo >= 120").tolist() == [False, True, False, True]
    assert slices.matching_rows(frame, "tempo >= 85 and tempo < 105").tolist() == [True, False, True, False]
    assert slices.matching_rows(frame, "source == 'base'").tolist() == [True, True, False, False]
    assert slices.matching_rows(frame, 'origin != "fresh"').tolist() == [True, False, True, True]
    assert slices.matching_rows(frame, "champion_reference == 1").tolist() == [True, False, False, False]
    assert slices.matching_rows(frame, "").all()
    # A window counts back from the newest observed row; rows without a time are never in it.
    assert slices.matching_rows(frame, "source == 'traffic'", window_days=7).tolist() == [
        False,
        False,
        False,
        True,
    ]
    assert slices.rule_text("tempo >= 120", 7) == "tempo >= 120 and observed within 7 days of the newest row"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("tempo > ", "cannot read 'tempo >'"),
        ("tempo >= 120 or energy > 0.5", "cannot read"),
        ("bpm >= 120", "unknown column 'bpm'"),
        ("__import__('os') == 1", "cannot read"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_slice(rule: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(promotion={"slices": [{"name": "mine", "where": rule}]})
    assert "promotion.slices.0.where" in str(refused.value)


def test_slices_are_declared_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "REGGAETON_PROMOTION__SLICES",
        '[{"name": "latin-fast", "where": "tempo >= 130 and danceability >= 0.7", "min_positives": 40,'
        ' "allowed_regression": 0.05}]',
    )
    [spec] = Settings().promotion.slices
    assert (spec.name, spec.min_positives, spec.allowed_regression) == ("latin-fast", 40, 0.05)
    assert spec.rule == "tempo >= 130 and danceability >= 0.7"
    monkeypatch.setenv("REGGAETON_PROMOTION__SLICES", '[{"name": "a"}, {"name": "a"}]')
    with pytest.raises(ValidationError, match="slice names must be unique: a"):
        Settings()
    assert "REGGAETON_PROMOTION__SLICES" in os.environ


def test_default_slices_cover_the_base_data_the_champion_recent_traffic_and_bands() -> None:
    names = [spec.name for spec in Settings().promotion.slices]
    assert names == [
        "base-data",
        "champion-reference",
        "recent-traffic",
        "dembow-tempo",
        "fast-tempo",
        "acoustic",
    ]
