"""The pure part of batch scoring: a chunk's checks and answers, progress, and what a run is resumed by."""

from __future__ import annotations

import numpy as np
import pytest

from reggaeton import schema
from reggaeton.batch import (
    Counts,
    ModelAnswerError,
    Progress,
    RunIdentity,
    answer_chunk,
    default_id_columns,
    usable_cores,
    worker_count,
)
from reggaeton.schema import EXAMPLE_SONGS, FEATURE_NAMES, INVALID_EXAMPLE_SONG


def _columns(songs: list[dict[str, float]]) -> dict[str, np.ndarray]:
    return {name: np.array([song[name] for song in songs], dtype=np.float64) for name in FEATURE_NAMES}


GOOD = EXAMPLE_SONGS[0]


def test_every_problem_of_every_row_is_found_and_named() -> None:
    songs = [
        GOOD,
        INVALID_EXAMPLE_SONG,  # the challenge's own example: loudness 125.513 dB
        {**GOOD, "tempo": 0.0},  # tempo's lower bound is open
        {**GOOD, "danceability": np.nan, "energy": np.inf, "speechiness": -0.1},
        {**GOOD, "valence": np.nan},  # NaN because its text was not a number
        {**GOOD, "tempo": 300.0, "loudness": -60.0},  # both closed bounds are inside
    ]
    not_numbers = {"valence": np.array([False, False, False, False, True, False])}

    codes = schema.row_problems(_columns(songs), not_numbers)

    assert codes.shape == (6, 7)
    assert not codes[0].any() and not codes[5].any()
    texts = [
        schema.problem_text(row, np.array([song[n] for n in FEATURE_NAMES]))
        for row, song in zip(codes, songs, strict=True)
    ]
    assert texts[1] == "loudness 125.513 is outside [-60, 0]"
    assert texts[2] == "tempo 0 is outside (0, 300]"
    assert texts[3] == "danceability is missing; energy inf is not finite; speechiness -0.1 is outside [0, 1]"
    assert texts[4] == "valence is not a number"


def test_validate_frame_still_refuses_what_the_row_check_rejects() -> None:
    """One schema: the frame check (training, gate) and the row check (batch) agree on the bounds."""
    import pandas as pd

    for song in (INVALID_EXAMPLE_SONG, {**GOOD, "tempo": 0.0}):
        with pytest.raises(schema.SchemaError, match="outside"):
            schema.validate_frame(pd.DataFrame([song]), "songs")
        assert schema.row_problems(_columns([song])).any()


def _double(features: np.ndarray) -> np.ndarray:
    return np.clip(features[:, 0] * 2 - 0.5, 0, 1)  # a stand-in model: any function of the rows


def test_a_chunk_scores_its_valid_rows_and_rejects_the_others_and_every_row_is_counted() -> None:
    songs = [GOOD, INVALID_EXAMPLE_SONG, {**GOOD, "danceability": 0.25}, {**GOOD, "energy": np.nan}]
    columns = _columns(songs)

    answer = answer_chunk(columns, {}, _double, threshold=0.5)

    assert answer.valid.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(answer.probability, [_double(np.array([[GOOD["danceability"]]]))[0], 0.0])
    assert answer.label.tolist() == [1, 0]  # 1.152 -> 1 clipped >= 0.5; 0 < 0.5
    assert answer.fields == ["loudness", "energy"]
    assert answer.reasons == ["loudness 125.513 is outside [-60, 0]", "energy is missing"]
    assert (answer.read, answer.scored, answer.rejected) == (4, 2, 2)


def test_label_is_probability_at_or_above_the_threshold_as_the_api() -> None:
    columns = _columns([GOOD, GOOD])
    answer = answer_chunk(columns, {}, lambda rows: np.array([0.3, 0.29999]), threshold=0.3)
    assert answer.label.tolist() == [1, 0]


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.1])
def test_a_model_answering_no_probability_stops_the_chunk(bad: float) -> None:
    with pytest.raises(ModelAnswerError, match="no probability in"):
        answer_chunk(_columns([GOOD, GOOD]), {}, lambda rows: np.array([0.2, bad]), threshold=0.5)


def test_a_chunk_with_only_rejected_rows_never_calls_the_model() -> None:
    def refuse(rows: np.ndarray) -> np.ndarray:
        raise AssertionError("called")

    answer = answer_chunk(_columns([INVALID_EXAMPLE_SONG]), {}, refuse, threshold=0.5)
    assert (answer.scored, answer.rejected) == (0, 1)


def test_default_id_columns() -> None:
    header = ["", "id_new", "track_id", "Id", "popularity", "danceability", "valid", "id"]
    assert default_id_columns(header) == ["id_new", "track_id", "Id", "id"]


def test_workers_follow_the_cores_unless_configured_and_never_outnumber_the_chunks() -> None:
    assert worker_count(None) == usable_cores() >= 1
    assert worker_count(3) == 3
    assert worker_count(8, chunks=2) == 2
    assert worker_count(None, chunks=0) == 1


def test_progress_line_rate_and_eta() -> None:
    progress = Progress(rows=1_200_000, total=10_000_000, elapsed_s=4.0, rows_this_attempt=1_000_000)
    assert progress.rate == 250_000
    assert progress.eta_s == pytest.approx(35.2)
    assert progress.line() == "1,200,000 of ~10,000,000 rows (12 %), 250,000 rows/s, ETA 35 s"
    assert Progress(5, None, 1.0, 5).line() == "5 rows, 5 rows/s"


def test_counts_add_up() -> None:
    total = Counts(10, 7, 3) + Counts(5, 5, 0)
    assert total == Counts(15, 12, 3) and total.balanced
    assert not Counts(10, 7, 2).balanced


def test_a_run_is_the_same_run_only_with_the_same_input_version_threshold_and_layout() -> None:
    identity = RunIdentity("a" * 64, "m", "3", 0.4, "parquet", 1000, ("track_id",))
    assert RunIdentity.from_dict(identity.to_dict()) == identity
    assert identity.differences(identity) == []
    other = RunIdentity("b" * 64, "m", "2", 0.4, "csv", 1000, ())
    assert identity.differences(other) == [
        "input content (sha256 bbbbbbbbbbbb, now aaaaaaaaaaaa)",
        "model version 2 (now 3)",
        "format csv (now parquet)",
        "id columns none (now track_id)",
    ]
