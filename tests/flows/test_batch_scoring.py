"""The batch scoring function on a real SQLite MLflow registry: answers, rejects, counts, resume, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from catalogue_support import (
    BAD_ROWS,
    catalogue_frame,
    register_forest,
    scoring_settings,
    write_csv,
    write_parquet,
)

from adapters import registry
from adapters.catalogue import CatalogueError, partial_path
from flows.batch_scoring import ScoringRequest, score
from reggaeton import names
from reggaeton.batch import Progress
from reggaeton.schema import FEATURE_NAMES
from reggaeton.settings import Settings


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str, str]:
    """Two versions (thresholds 0.4 and 0.6) in one store; the first is the champion."""
    settings = scoring_settings(tmp_path_factory.mktemp("registry") / "state")
    first = register_forest(settings, threshold=0.4)
    second = register_forest(settings, threshold=0.6, trees=10, seed=1)
    registry.connect(settings).set_registered_model_alias(names.MODEL_NAME, names.CHAMPION, first)
    return settings, first, second


def _files(out: Path) -> dict[str, bytes]:
    """Every data file of an output (the manifest holds timings, so it is compared apart)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_csv_and_parquet_inputs_get_the_models_answers_and_every_row_is_scored_or_rejected(
    registered: tuple[Settings, str, str], tmp_path: Path
) -> None:
    settings, champion, _ = registered
    frame = catalogue_frame(2500)
    csv = score(
        settings, ScoringRequest(str(write_csv(frame, tmp_path / "songs.csv")), tmp_path / "from-csv")
    )
    parquet = score(
        settings, ScoringRequest(str(write_parquet(frame, tmp_path / "songs.parquet")), tmp_path / "from-pq")
    )

    scores = pd.read_parquet(tmp_path / "from-csv" / "scores")
    assert list(scores.columns) == [
        "row",
        "track_id",
        "probability",
        "label",
        "model_name",
        "model_version",
        "threshold",
    ]
    assert len(scores) == 2497 and scores["row"].tolist() == [r for r in range(1, 2501) if r not in BAD_ROWS]
    pipeline = registry.load_pipeline(names.MODEL_NAME, champion)
    valid = frame.drop(index=[row - 1 for row in BAD_ROWS])
    expected = pipeline.predict_proba(valid[list(FEATURE_NAMES)].to_numpy(dtype=float))[:, 1]
    np.testing.assert_allclose(scores["probability"], expected, rtol=0, atol=1e-12)
    assert (scores["label"] == (scores["probability"] >= 0.4)).all()
    assert (scores["track_id"] == valid["track_id"].to_numpy()).all()
    assert set(zip(scores["model_name"], scores["model_version"], scores["threshold"], strict=True)) == {
        (names.MODEL_NAME, champion, 0.4)
    }
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "from-pq" / "scores"), scores)

    rejects = pd.read_parquet(tmp_path / "from-csv" / "rejects.parquet")
    assert rejects.to_dict("list") == {
        "row": list(BAD_ROWS),
        "track_id": [f"t1-{row - 1:07d}" for row in BAD_ROWS],
        "field": [field for field, _ in BAD_ROWS.values()],
        "reason": [reason for _, reason in BAD_ROWS.values()],
    }
    # A Parquet column has one type: the text "abc" was a null there, so a missing value.
    assert (
        pd.read_parquet(tmp_path / "from-pq" / "rejects.parquet")["reason"].tolist()[-1]
        == "energy is missing"
    )

    for result in (csv, parquet):
        assert (result.counts.read, result.counts.scored, result.counts.rejected) == (2500, 2497, 3)
        assert result.manifest["input"]["files"][0] | {"read": 2500} == result.manifest["input"]["files"][0]
        assert (
            result.manifest["model"] | {"version": champion, "alias": "champion"} == result.manifest["model"]
        )
        assert result.manifest["output"]["parts"] == [f"part-00000-00000{i}.parquet" for i in range(3)]
    assert not partial_path(tmp_path / "from-csv").exists()
    # Batch rows are not live traffic: nothing was written to the prediction log.
    assert not (settings.state_path / "predictions.db").exists()


def test_csv_output_and_a_folder_input_name_each_rows_file(
    registered: tuple[Settings, str, str], tmp_path: Path
) -> None:
    settings, _, second = registered
    write_csv(catalogue_frame(1200, seed=1), tmp_path / "in" / "a.csv")
    write_parquet(catalogue_frame(300, seed=2, bad=False), tmp_path / "in" / "more" / "b.parquet")

    result = score(
        settings,
        ScoringRequest(
            str(tmp_path / "in"), tmp_path / "out", version=second, output_format="csv", id_columns=()
        ),
    )

    assert result.manifest["output"]["parts"] == [
        "part-00000-000000.csv",
        "part-00000-000001.csv",
        "part-00001-000000.csv",
    ]
    scores = pd.concat(
        [pd.read_csv(tmp_path / "out" / "scores" / p) for p in result.manifest["output"]["parts"]]
    )
    assert list(scores.columns) == [
        "row",
        "file",
        "probability",
        "label",
        "model_name",
        "model_version",
        "threshold",
    ]
    assert scores.groupby("file")["row"].agg(["min", "max", "count"]).to_dict("index") == {
        "a.csv": {"min": 1, "max": 1200, "count": 1197},
        "more/b.parquet": {"min": 1, "max": 300, "count": 300},
    }
    assert set(scores["model_version"].astype(str)) == {second} and set(scores["threshold"]) == {0.6}
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert rejects[["row", "file", "field"]].to_dict("list") == {
        "row": list(BAD_ROWS),
        "file": ["a.csv"] * 3,
        "field": [field for field, _ in BAD_ROWS.values()],
    }


class _Stop(Exception):
    """Stands for a run killed after its first chunk."""


def _stop_after_first_chunk(progress: Progress) -> None:
    raise _Stop


def test_a_stopped_run_continues_from_its_finished_chunks_and_ends_byte_identical(
    registered: tuple[Settings, str, str], tmp_path: Path
) -> None:
    settings, champion, second = registered
    songs = write_csv(catalogue_frame(3500), tmp_path / "songs.csv")
    request = ScoringRequest(str(songs), tmp_path / "out")
    with pytest.raises(_Stop):
        score(settings, request, progress=_stop_after_first_chunk)
    partial = partial_path(tmp_path / "out")
    assert (partial / "scores" / "part-00000-000000.parquet").exists() and not (tmp_path / "out").exists()

    # Another version, or another input, never continues it.
    with pytest.raises(
        CatalogueError,
        match=rf"holds a partial run with another model version {champion} \(now {second}\).*--restart",
    ):
        score(settings, ScoringRequest(str(songs), tmp_path / "out", version=second))
    changed = write_csv(catalogue_frame(3500).assign(popularity=1), tmp_path / "changed" / "songs.csv")
    with pytest.raises(CatalogueError, match=r"another input content \(sha256 "):
        score(settings, ScoringRequest(str(changed), tmp_path / "out"))

    resumed = score(settings, request)
    uninterrupted = score(settings, ScoringRequest(str(songs), tmp_path / "whole"))

    assert _files(tmp_path / "out") == _files(tmp_path / "whole")
    timings = resumed.manifest["timings"]
    assert (timings["attempts"], timings["resumed_chunks"], timings["resumed_rows"]) == (2, 1, 1000)
    assert resumed.counts == uninterrupted.counts and resumed.counts.read == 3500
    assert not partial.exists()
    client = registry.connect(settings)
    experiment = client.get_experiment_by_name(names.EXPERIMENT_BATCH)
    runs = {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])}
    stopped = [run for run in runs.values() if run.data.params.get("output") == str(tmp_path / "out")]
    assert sorted(run.info.status for run in stopped) == ["FAILED", "FINISHED"]
    finished = runs[resumed.manifest["mlflow_run_id"]]
    assert finished.data.params["resumed_chunks"] == "1" and finished.data.params["model_version"] == champion
    assert finished.data.params["input_sha256"] == resumed.manifest["input"]["sha256"]
    assert finished.data.metrics["rows_read"] == 3500 and finished.data.metrics["rows_rejected"] == 3

    # Done is done: the same request finds it, another version is refused, --restart only acts on a partial.
    again = score(settings, request)
    assert again.already_done and again.manifest == resumed.manifest
    with pytest.raises(
        CatalogueError, match=rf"already holds scores with another model version {champion} \(now {second}\)"
    ):
        score(settings, ScoringRequest(str(songs), tmp_path / "out", version=second, restart=True))


def test_restart_discards_a_partial_run_of_another_version(
    registered: tuple[Settings, str, str], tmp_path: Path
) -> None:
    settings, _, second = registered
    songs = write_csv(catalogue_frame(2100), tmp_path / "songs.csv")
    with pytest.raises(_Stop):
        score(settings, ScoringRequest(str(songs), tmp_path / "out"), progress=_stop_after_first_chunk)

    result = score(settings, ScoringRequest(str(songs), tmp_path / "out", version=second, restart=True))

    assert result.manifest["model"]["version"] == second and result.manifest["timings"]["resumed_chunks"] == 0
    assert set(pd.read_parquet(tmp_path / "out" / "scores")["model_version"]) == {second}


def test_a_version_or_alias_that_does_not_exist_is_one_line(
    registered: tuple[Settings, str, str], tmp_path: Path
) -> None:
    settings, champion, second = registered
    songs = str(write_csv(catalogue_frame(10), tmp_path / "songs.csv"))
    with pytest.raises(LookupError) as missing:
        score(settings, ScoringRequest(songs, tmp_path / "out", version="99"))
    assert (
        str(missing.value)
        == f"{names.MODEL_NAME} has no version '99' (registered versions: {champion}, {second})"
    )
    with pytest.raises(LookupError, match=f"^{names.MODEL_NAME} has no version with the alias 'challenger'$"):
        score(settings, ScoringRequest(songs, tmp_path / "out", alias="challenger"))
    assert not (tmp_path / "out").exists() and not partial_path(tmp_path / "out").exists()


def test_a_request_that_cannot_be_met_is_refused_before_anything_is_read(
    registered: tuple[Settings, str, str], tmp_path: Path
) -> None:
    settings, champion, _ = registered
    missing = str(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="format 'xlsx': choose one of parquet, csv"):
        score(settings, ScoringRequest(missing, tmp_path / "out", output_format="xlsx"))
    with pytest.raises(ValueError, match="give a version or an alias, not both"):
        score(settings, ScoringRequest(missing, tmp_path / "out", version=champion, alias="champion"))
    with pytest.raises(ValueError, match="id column 'tempo' is a feature"):
        score(settings, ScoringRequest(missing, tmp_path / "out", id_columns=("track_id", "tempo")))
    with pytest.raises(CatalogueError, match=r"missing\.csv: no such file or folder"):
        score(settings, ScoringRequest(missing, tmp_path / "out"))
