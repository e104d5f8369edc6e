"""`reggaeton score` as a person runs it: one line for what cannot be done, and a run killed midway that,
started again, continues and ends with the very bytes of an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from catalogue_support import catalogue_frame, register_forest, scoring_settings, write_csv
from process_support import running

from adapters.catalogue import JOURNAL, partial_path
from embedded.manual import wait_until
from flows.batch_scoring import ScoringRequest, score
from reggaeton.settings import Settings

REGGAETON = Path(sys.executable).with_name("reggaeton")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    settings = scoring_settings(tmp_path_factory.mktemp("registry") / "state")
    return settings, register_forest(settings, threshold=0.4)


def _command(settings: Settings, args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REGGAETON_", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"))
    }
    env.update(
        {
            "REGGAETON_STATE_DIR": str(settings.state_path),
            "REGGAETON_MLFLOW__TRACKING_URI": settings.tracking_uri,
        }
    )
    return subprocess.Popen(
        [str(REGGAETON), "score", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the test can stop it and its workers
    )


def _run(settings: Settings, args: list[str], cwd: Path) -> tuple[int, str, str]:
    process = _command(settings, args, cwd)
    try:
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, out, err


def _one_line(code: int, err: str) -> str:
    assert code != 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_version_that_does_not_exist_is_one_line(registered: tuple[Settings, str], tmp_path: Path) -> None:
    settings, version = registered
    write_csv(catalogue_frame(10), tmp_path / "songs.csv")
    code, _, err = _run(settings, ["songs.csv", "--out", "scored", "--version", "99"], tmp_path)
    assert _one_line(code, err) == (
        f"reggaeton score: reggaeton-classifier has no version '99' (registered versions: {version})"
    )
    assert not (tmp_path / "scored").exists() and not (tmp_path / "scored.partial").exists()


def test_a_malformed_file_stops_with_one_line_naming_file_row_and_column(
    registered: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, version = registered
    frame = catalogue_frame(30, bad=False).astype(str)
    rows = [",".join(frame.columns)] + [",".join(row) for row in frame.to_numpy().tolist()]
    rows[25] = rows[25] + ",extra"
    (tmp_path / "songs.csv").write_text("\n".join(rows) + "\n")
    code, _, err = _run(settings, ["songs.csv", "--out", "scored", "--version", version], tmp_path)
    assert _one_line(code, err) == (
        "reggaeton score: songs.csv: row 25: 10 fields where the header has 9 "
        "(a field after the last column 'loudness')"
    )
    assert not (tmp_path / "scored").exists() and not (tmp_path / "scored.partial").exists()


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (from /proc): the scoring workers are children of a fork server."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


@pytest.mark.slow
def test_a_run_killed_midway_continues_when_started_again_and_ends_byte_identical(
    registered: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, version = registered
    write_csv(catalogue_frame(200_000), tmp_path / "songs.csv")
    args = ["songs.csv", "--out", "scored", "--version", version, "--chunk-rows", "1000", "--workers", "2"]
    journal = partial_path(tmp_path / "scored") / JOURNAL

    def chunks_done() -> int:
        return journal.read_text().count('"chunk"') if journal.exists() else 0

    first = _command(settings, args, tmp_path)
    workers: set[int] = set()
    try:
        wait_until(
            "3 chunks scored",
            lambda: True if chunks_done() >= 3 or first.poll() is not None else None,
            timeout_s=240,
            every_s=0.01,
        )
        workers = _descendants(first.pid)
        assert len(workers) >= 3, workers  # the fork server and two workers at least
        os.kill(first.pid, signal.SIGKILL)  # the parent only: its workers must end by themselves
        first.wait()
        assert first.returncode == -signal.SIGKILL, first.communicate()
        wait_until(
            "the workers to end",
            lambda: True if not any(map(running, workers)) else None,
            timeout_s=30,
            every_s=0.1,
        )
    finally:  # its process group: the workers too, should the assertion above have failed
        if first.poll() is None or any(map(running, workers)):  # else the group's number may be another's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = chunks_done()
    assert 3 <= killed_at < 200 and not (tmp_path / "scored").exists()

    code, out, err = _run(settings, args, tmp_path)

    assert code == 0, err
    summary = out.splitlines()[-4:]
    assert summary[0].startswith("scored 199,997 of 200,000 rows in "), out
    assert summary[0].endswith(
        f"with reggaeton-classifier version {version} (threshold 0.4), "
        f"{killed_at} chunk(s) done by an earlier attempt"
    )
    assert summary[1:] == [
        f"scores:  {tmp_path / 'scored' / 'scores'} (200 parquet part(s))",
        f"rejects: {tmp_path / 'scored' / 'rejects.parquet'} (3 row(s) outside the schema)",
        f"manifest: {tmp_path / 'scored' / 'manifest.json'}",
    ]
    reference = tmp_path / "reference"
    score(settings, ScoringRequest(str(tmp_path / "songs.csv"), reference, version=version))  # one process

    def data_files(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"
        }

    resumed = data_files(tmp_path / "scored")
    assert len(resumed) == 201  # 200 parts and the rejects file, nothing else left behind
    assert resumed == data_files(reference)
    assert not partial_path(tmp_path / "scored").exists()
