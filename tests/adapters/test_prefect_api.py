"""Which Prefect API the package's clients use: the settings' server, or one Prefect already has."""

from __future__ import annotations

from pathlib import Path

from prefect.settings import PREFECT_API_URL, temporary_settings

from adapters.prefect_api import prefect_api
from reggaeton.settings import Settings

ELSEWHERE = "http://127.0.0.1:9/api"


def _settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", prefect={"port": 4999})


def test_stack_tools_always_use_the_settings_server(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with temporary_settings(updates={PREFECT_API_URL: ELSEWHERE}), prefect_api(settings):
        assert PREFECT_API_URL.value() == settings.prefect_api_url == "http://127.0.0.1:4999/api"


def test_entry_points_keep_a_configured_server_and_default_to_the_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with (
        temporary_settings(updates={PREFECT_API_URL: ELSEWHERE}),
        prefect_api(settings, keep_configured=True),
    ):
        assert PREFECT_API_URL.value() == ELSEWHERE
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with prefect_api(settings, keep_configured=True):
            assert PREFECT_API_URL.value() == settings.prefect_api_url
        assert PREFECT_API_URL.value() is None
