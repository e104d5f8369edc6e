"""Reading a catalogue in fixed chunks (CSV, Parquet, a folder, an fsspec URL) and the run's journal."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from catalogue_support import catalogue_frame, write_csv, write_parquet

from adapters import catalogue
from adapters.catalogue import CatalogueError, Journal
from reggaeton.batch import ChunkKey, Counts
from reggaeton.schema import FEATURE_NAMES

IDS = {"track_id": pa.string()}


def _chunks(source: str, rows: int = 1000) -> list[catalogue.Chunk]:
    found = catalogue.open_catalogue(source)
    return list(catalogue.iter_chunks(found, rows, catalogue.id_types(found, list(IDS))))


def test_a_folder_is_read_file_by_file_in_fixed_chunks_whatever_the_reader_hands_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_csv(catalogue_frame(2500, seed=1), tmp_path / "in" / "a.csv")
    write_parquet(catalogue_frame(1200, seed=2, bad=False), tmp_path / "in" / "b" / "c.parquet")
    (tmp_path / "in" / "notes.txt").write_text("not a catalogue file")

    found = catalogue.open_catalogue(str(tmp_path / "in"))
    assert [(each.name, each.kind, each.rows) for each in found.files] == [
        ("a.csv", "csv", 2500),
        ("b/c.parquet", "parquet", 1200),
    ]
    chunks = _chunks(str(tmp_path / "in"))
    assert [(c.key, c.first_row, c.batch.num_rows) for c in chunks] == [
        (ChunkKey(0, 0), 1, 1000),
        (ChunkKey(0, 1), 1001, 1000),
        (ChunkKey(0, 2), 2001, 500),
        (ChunkKey(1, 0), 1, 1000),
        (ChunkKey(1, 1), 1001, 200),
    ]
    assert chunks[1].batch.column("track_id")[0].as_py() == "t1-0001000"
    assert chunks[0].batch.schema.names == ["track_id", *FEATURE_NAMES]

    # The reader's own batches (a few rows each here) do not change a chunk's rows.
    monkeypatch.setattr(catalogue, "CSV_BLOCK", 4096)
    monkeypatch.setattr(catalogue, "PARQUET_BATCH", 77)
    again = _chunks(str(tmp_path / "in"))
    assert [c.key for c in again] == [c.key for c in chunks]
    assert all(a.batch.equals(b.batch) for a, b in zip(again, chunks, strict=True))


def test_text_that_is_not_a_number_rejects_its_row_and_spaces_around_a_number_do_not(tmp_path: Path) -> None:
    frame = catalogue_frame(20)
    frame.loc[4, "valence"] = " 0.25 "
    [chunk] = _chunks(str(write_csv(frame, tmp_path / "songs.csv")))

    values, not_numbers = catalogue.feature_values(chunk.batch)

    assert np.flatnonzero(not_numbers["energy"]).tolist() == [10]
    assert np.isnan(values["energy"][10]) and np.isnan(values["tempo"][6])
    assert not not_numbers["tempo"].any()  # empty: missing, not "not a number"
    assert values["valence"][4] == 0.25 and values["loudness"][2] == 125.513


def test_a_row_with_a_field_missing_stops_naming_the_file_the_row_and_the_column(tmp_path: Path) -> None:
    lines = (tmp_path / "songs.csv").open("w")
    frame = catalogue_frame(6, bad=False)
    lines.write(",".join(frame.columns) + "\n")
    for number, row in enumerate(frame.astype(str).to_numpy().tolist(), start=1):
        lines.write(",".join(row[:-1] if number == 4 else row) + "\n")
    lines.close()

    with pytest.raises(CatalogueError) as stopped:
        _chunks(str(tmp_path / "songs.csv"))
    assert (
        str(stopped.value)
        == "songs.csv: row 4: 8 fields where the header has 9 (column 'loudness' is missing)"
    )


def test_a_missing_feature_column_is_named_with_its_file(tmp_path: Path) -> None:
    write_csv(catalogue_frame(5).drop(columns=["tempo"]), tmp_path / "in" / "b.csv")
    found = catalogue.open_catalogue(str(tmp_path / "in"))
    with pytest.raises(CatalogueError, match=r"^b\.csv: column 'tempo' is missing \(header: track_id,"):
        catalogue.check_columns(found, ["track_id"])


def test_parquet_features_must_be_numbers_or_text(tmp_path: Path) -> None:
    table = pa.table(
        {name: pa.array([[0.5]] * 3) if name == "energy" else [0.5] * 3 for name in FEATURE_NAMES}
    )
    pq.write_table(table.append_column("track_id", pa.array(["a", "b", "c"])), tmp_path / "songs.parquet")
    with pytest.raises(
        CatalogueError,
        match=r"songs\.parquet: column 'energy' holds list<element: double>, not numbers \(row 1\)",
    ):
        _chunks(str(tmp_path / "songs.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CatalogueError, match=r"^broken\.parquet: not a readable Parquet file"):
        catalogue.open_catalogue(str(tmp_path / "broken.parquet"))


def test_nothing_to_read_is_said_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="no such file or folder"):
        catalogue.open_catalogue(str(tmp_path / "missing.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogueError, match=r"no \.csv, \.csv\.gz, \.parquet or \.pq file"):
        catalogue.open_catalogue(str(tmp_path / "empty"))


def test_an_fsspec_url_reads_as_the_same_file_on_disk(tmp_path: Path) -> None:
    local = write_csv(catalogue_frame(1500), tmp_path / "songs.csv")
    memory = fsspec.filesystem("memory")
    memory.pipe(f"/{tmp_path.name}/songs.csv", local.read_bytes())
    try:
        url = f"memory://{tmp_path.name}/songs.csv"
        assert catalogue.open_catalogue(url).input_hash == catalogue.open_catalogue(str(local)).input_hash
        remote, on_disk = _chunks(url), _chunks(str(local))
        assert [c.key for c in remote] == [c.key for c in on_disk]
        assert all(a.batch.equals(b.batch) for a, b in zip(remote, on_disk, strict=True))
    finally:
        memory.rm(f"/{tmp_path.name}", recursive=True)


def test_the_journal_drops_a_line_cut_short_by_a_kill(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.started("2026-01-01T00:00:00+00:00")
    journal.append(ChunkKey(0, 0), Counts(10, 9, 1))
    journal.append(ChunkKey(0, 2), Counts(10, 10, 0))
    with journal.path.open("ab") as handle:
        handle.write(b'{"chunk": 1, "file": 0, "re')  # the process died mid-write

    assert journal.read() == {ChunkKey(0, 0): Counts(10, 9, 1), ChunkKey(0, 2): Counts(10, 10, 0)}
    journal.append(ChunkKey(0, 1), Counts(10, 10, 0))  # the next line starts on a line of its own
    assert set(journal.read()) == {ChunkKey(0, 0), ChunkKey(0, 1), ChunkKey(0, 2)}
    assert journal.attempts() == ["2026-01-01T00:00:00+00:00"]
