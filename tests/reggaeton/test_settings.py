"""Settings refuse configurations that cannot work, with a message naming the fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reggaeton.settings import Settings


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
