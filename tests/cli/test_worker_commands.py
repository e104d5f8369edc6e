"""The operator's commands as runs on a stack's worker (`--stack compose`): their one-line errors.

The runs themselves, on a real compose stack: tests/infra/test_compose_stack.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from cli import commands
from cli.main import main
from flows.promote import PromotionError


@flow(name="refusing-probe")
def refusing(error: str) -> None:
    if error == "promotion":
        raise PromotionError("refusing to promote version 3: failed to load: OSError: no such file")
    raise ValueError("not a version")


def _failed_run(error: str) -> object:
    state = refusing(error, return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


@pytest.mark.usefixtures("prefect_api_url")
def test_a_refused_promotion_is_the_flows_own_line_and_another_failure_names_the_run() -> None:
    assert PromotionError.__name__ == commands.PROMOTION_ERROR
    refused = _failed_run("promotion")
    assert commands.failure_line("promote-version", refused) == (
        "refusing to promote version 3: failed to load: OSError: no such file"
    )  # what the local command says for the same refusal
    other = _failed_run("value")
    name = other.name  # type: ignore[attr-defined]
    assert commands.failure_line("promotion-gate", other) == (
        f"promotion-gate run {name} Failed: ValueError: not a version"
    )


def test_a_data_folder_is_refused_on_the_compose_stack_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env: nothing is reached before the refusal
    assert main(["--stack", "compose", "train", "--data-folder", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "reggaeton train: --data-folder names a folder on this machine; the compose stack's worker trains "
        "on its own data source (REGGAETON_DATA__FOLDER in its environment)"
    ]
