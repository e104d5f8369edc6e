"""Settings refuse configurations that cannot work, with a message naming the fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reggaeton.settings import EXAMPLE_SECRETS, Settings


def test_defaults_are_the_local_stack() -> None:
    settings = Settings()
    assert settings.mode == "local"
    assert settings.tracking_uri.startswith(("sqlite:///", "http://127.0.0.1"))


def test_two_local_services_on_one_port_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"mlflow\.port and prefect\.alert_receiver_port are both 6100"):
        Settings(mlflow={"port": 6100}, prefect={"alert_receiver_port": 6100})


def test_production_needs_its_own_admin_token() -> None:
    with pytest.raises(ValidationError, match="REGGAETON_SERVING__ADMIN_TOKEN"):
        Settings(mode="production")
    assert Settings(mode="production", serving={"admin_token": "s3cret-token"}).mode == "production"


@pytest.mark.parametrize("example", sorted(EXAMPLE_SECRETS))
def test_production_refuses_example_secrets_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, example: str
) -> None:
    monkeypatch.setenv("REGGAETON_MODE", "production")
    monkeypatch.setenv("REGGAETON_SERVING__ADMIN_TOKEN", example)
    with pytest.raises(ValidationError, match="REGGAETON_SERVING__ADMIN_TOKEN is an example value"):
        Settings()
    monkeypatch.setenv("REGGAETON_SERVING__ADMIN_TOKEN", "s3cret-token")
    monkeypatch.setenv("REGGAETON_SERVING__API_KEY", example)
    with pytest.raises(ValidationError, match="REGGAETON_SERVING__API_KEY is an example value"):
        Settings()
    monkeypatch.delenv("REGGAETON_SERVING__API_KEY")
    # A database password is a secret too, inside its URL.
    monkeypatch.setenv("REGGAETON_SERVING__PREDICTION_LOG_URL", f"postgresql://reggaeton:{example}@db:5432/p")
    with pytest.raises(ValidationError, match="password in REGGAETON_SERVING__PREDICTION_LOG_URL"):
        Settings()
    monkeypatch.setenv("REGGAETON_SERVING__PREDICTION_LOG_URL", "postgresql://reggaeton:s3cret@db:5432/p")
    assert Settings().mode == "production"


def test_local_mode_accepts_the_example_secrets() -> None:
    settings = Settings(
        serving={"admin_token": "change-me"}, training={"optuna_storage": "postgresql://u:change-me@h/o"}
    )
    assert settings.mode == "local"
