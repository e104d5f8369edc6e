"""Which stack a command talks to: own settings > standard variables > compose .env > recorded > defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli import endpoints
from embedded import stack
from reggaeton.settings import Settings


@pytest.fixture
def recorded(tmp_path: Path) -> Settings:
    """Settings whose state folder holds the endpoints a stack on other ports recorded."""
    settings = Settings(state_dir=tmp_path / "state")
    started = Settings(
        state_dir=tmp_path / "state", mlflow={"port": 5101}, prefect={"port": 4301}, serving={"port": 8101}
    )
    settings.ensure_state_dir()
    stack.endpoints_path(settings).write_text(json.dumps(stack.endpoints(started)))
    return settings


def test_the_stack_that_is_up_wins_over_the_defaults(recorded: Settings, tmp_path: Path) -> None:
    found = endpoints.resolve(recorded, environ={}, env_file=tmp_path / "none.env")
    assert (found.mlflow, found.prefect_api, found.api) == (
        "http://127.0.0.1:5101",
        "http://127.0.0.1:4301/api",
        "http://127.0.0.1:8101",
    )
    assert found.sources["mlflow"].endswith("stack.json")
    applied = endpoints.apply(recorded, found)
    assert applied.tracking_uri == "http://127.0.0.1:5101"
    assert applied.prefect_api_url == "http://127.0.0.1:4301/api"
    assert applied.serving.port == 8101
    # The stack's own ports too: `up` checks (and reuses) the services where they run.
    assert (applied.mlflow.port, applied.prefect.port) == (5101, 4301)


def test_without_a_recorded_stack_the_defaults_are_the_local_servers(settings: Settings) -> None:
    """Never the SQLite file: the local MLflow server owns the artifacts (mlflow-artifacts:/ URIs)."""
    found = endpoints.resolve(settings, environ={})
    assert found.mlflow == "http://127.0.0.1:5000"
    assert found.prefect_api == "http://127.0.0.1:4200/api"
    assert set(found.sources.values()) == {"default"}


def test_standard_variables_win_over_the_recorded_stack(recorded: Settings) -> None:
    environ = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:7001", "PREFECT_API_URL": "http://127.0.0.1:7002/api"}
    found = endpoints.resolve(recorded, environ=environ)
    assert (found.mlflow, found.prefect_api) == ("http://127.0.0.1:7001", "http://127.0.0.1:7002/api")
    assert found.sources == {
        "mlflow": "MLFLOW_TRACKING_URI",
        "prefect_api": "PREFECT_API_URL",
        "api": str(stack.endpoints_path(recorded)),
    }


def test_the_projects_own_settings_win_over_the_standard_variables(recorded: Settings) -> None:
    environ = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:7001",
        "REGGAETON_MLFLOW__TRACKING_URI": "http://127.0.0.1:7003",
        "PREFECT_API_URL": "http://127.0.0.1:7002/api",
        "REGGAETON_PREFECT__API_URL": "http://127.0.0.1:7004/api",
    }
    found = endpoints.resolve(recorded, environ=environ)
    assert (found.mlflow, found.prefect_api) == ("http://127.0.0.1:7003", "http://127.0.0.1:7004/api")


def test_compose_stack_is_found_through_the_env_file_ports(recorded: Settings, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# ports\nMLFLOW_PORT=15000\nPREFECT_PORT='14200'\nAPI_PORT=18000\nADMIN_TOKEN=x\n")
    for found in (
        endpoints.resolve(recorded, "compose", environ={}, env_file=env_file),
        endpoints.resolve(recorded, environ={"REGGAETON_STACK": "compose"}, env_file=env_file),
    ):
        assert (found.mlflow, found.prefect_api, found.api, found.receiver) == (
            "http://127.0.0.1:15000",
            "http://127.0.0.1:14200/api",
            "http://127.0.0.1:18000",
            None,
        )
        assert "docker-compose up -d" in found.start_hint()


def test_the_compose_credentials_never_put_the_signing_key_in_the_operators_process(
    recorded: Settings, tmp_path: Path
) -> None:
    """The gate, promote and rollback of a compose stack run on its worker, which signs: the command
    line takes the public key from .env (status verifies with it), never the private one."""
    env_file = tmp_path / ".env"
    env_file.write_text(
        "DECISION_SIGNING_KEY=private-half\nDECISION_VERIFY_KEY=public-half\nFEEDBACK_TOKEN=f\n"
    )
    found = endpoints.resolve(recorded, "compose", environ={}, env_file=env_file)
    applied = endpoints.apply(recorded, found)
    assert "DECISION_SIGNING_KEY" not in found.credentials
    assert applied.signing.private_key == recorded.signing.private_key
    assert applied.signing.public_keys == "public-half"
    assert applied.serving.feedback_token.get_secret_value() == "f"


def test_an_unknown_stack_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="REGGAETON_STACK='k8s'"):
        endpoints.resolve(settings, environ={"REGGAETON_STACK": "k8s"})


def test_unreachable_names_the_url_its_source_and_how_to_start(recorded: Settings, free_port: int) -> None:
    environ = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port}"}
    found = endpoints.resolve(recorded, environ=environ)
    with pytest.raises(endpoints.Unreachable) as caught:
        endpoints.require(found, "mlflow")
    assert str(caught.value) == (
        f"cannot reach mlflow at http://127.0.0.1:{free_port} (from MLFLOW_TRACKING_URI): "
        "start the local stack with `reggaeton up`"
    )


def test_up_reuses_the_running_stack_on_its_recorded_ports(
    tmp_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reggaeton up` without the ports the stack was started with finds it and reuses it."""
    from cli.main import main

    started = Settings(state_dir=tmp_path / "state", prefect={"alert_receiver_port": free_port})
    try:
        assert stack.up(started, ["receiver"]) == {"receiver": "started"}
        for key in [k for k in os.environ if k.startswith("REGGAETON_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("REGGAETON_STATE_DIR", str(tmp_path / "state"))
        assert main(["up", "receiver"]) == 0
        out = capsys.readouterr().out
        assert "receiver        reused" in out
        assert f"alerts      http://127.0.0.1:{free_port}/alerts" in out
    finally:
        stack.down(started, ["receiver"])
