"""Settings refuse configurations that cannot work, with a message naming the fields."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import ValidationError

from reggaeton.settings import (
    EXAMPLE_SECRETS,
    POSTGRES_CONNECT_ARGS,
    Settings,
    with_postgres_timeouts,
    without_password,
)


def test_defaults_are_the_local_stack() -> None:
    settings = Settings()
    assert settings.mode == "local"
    assert settings.tracking_uri.startswith(("sqlite:///", "http://127.0.0.1"))


def test_two_local_services_on_one_port_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"mlflow\.port and prefect\.alert_receiver_port are both 6100"):
        Settings(mlflow={"port": 6100}, prefect={"alert_receiver_port": 6100})


def test_a_production_api_needs_its_own_admin_and_feedback_tokens() -> None:
    # A process that serves nothing (the worker) holds no API token; an API without them does not start.
    bare = Settings(mode="production")
    assert [problem.split(" ")[0] for problem in bare.serving_problems()] == [
        "REGGAETON_SERVING__ADMIN_TOKEN",
        "REGGAETON_SERVING__FEEDBACK_TOKEN",
    ]
    assert Settings(serving={}).serving_problems() == []  # local mode: the placeholders serve
    with pytest.raises(ValidationError, match="REGGAETON_SERVING__ADMIN_TOKEN is an example value"):
        Settings(mode="production", serving={"admin_token": "local-dev-only"})
    # One credential per purpose: whoever sends labels cannot reload models with the same token.
    with pytest.raises(ValidationError, match="FEEDBACK_TOKEN equals REGGAETON_SERVING__ADMIN_TOKEN"):
        Settings(mode="production", serving={"admin_token": "s3cret-token", "feedback_token": "s3cret-token"})
    production = Settings(
        mode="production", serving={"admin_token": "s3cret-token", "feedback_token": "labels"}
    )
    assert production.serving_problems() == []


def test_an_empty_optional_secret_is_unset() -> None:
    # docker-compose's ${API_KEY:-} when .env leaves it out: no key required, not an empty one.
    settings = Settings(serving={"api_key": ""}, signing={"private_key": " ", "public_keys": ""})
    assert settings.serving.api_key is None
    assert settings.signing.private_key is None and settings.signing.public_keys is None


@pytest.mark.parametrize("example", sorted(EXAMPLE_SECRETS))
def test_production_refuses_example_secrets_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, example: str
) -> None:
    monkeypatch.setenv("REGGAETON_MODE", "production")
    monkeypatch.setenv("REGGAETON_SERVING__FEEDBACK_TOKEN", "labels-token")
    monkeypatch.setenv("REGGAETON_SERVING__ADMIN_TOKEN", example)
    with pytest.raises(ValidationError, match="REGGAETON_SERVING__ADMIN_TOKEN is an example value"):
        Settings()
    monkeypatch.setenv("REGGAETON_SERVING__ADMIN_TOKEN", "s3cret-token")
    monkeypatch.setenv("REGGAETON_SERVING__API_KEY", example)
    with pytest.raises(ValidationError, match="REGGAETON_SERVING__API_KEY is an example value"):
        Settings()
    monkeypatch.delenv("REGGAETON_SERVING__API_KEY")
    monkeypatch.setenv("REGGAETON_SIGNING__PRIVATE_KEY", example)
    with pytest.raises(ValidationError, match="REGGAETON_SIGNING__PRIVATE_KEY is an example value"):
        Settings()
    monkeypatch.delenv("REGGAETON_SIGNING__PRIVATE_KEY")
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


def test_postgres_urls_get_libpq_timeouts_and_keep_what_they_set() -> None:
    url = "postgresql://reggaeton:p%40ss@db:5432/optuna?connect_timeout=2&sslmode=require"
    session = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=3 -c tcp_keepalives_count=3"
    query = dict(parse_qsl(urlsplit(with_postgres_timeouts(url)).query))
    assert query == {
        **{key: str(value) for key, value in POSTGRES_CONNECT_ARGS.items()},
        "connect_timeout": "2",
        "sslmode": "require",
        "options": f"{session} -c tcp_user_timeout=10000",
    }
    # The URL's own options come last: Postgres applies the last -c of a name.
    own = dict(parse_qsl(urlsplit(with_postgres_timeouts(f"{url}&options=-c%20search_path%3Dlog")).query))
    assert own["options"] == f"{session} -c tcp_user_timeout=10000 -c search_path=log"
    assert with_postgres_timeouts(url).startswith("postgresql://reggaeton:p%40ss@db:5432/optuna?")
    for other in ("sqlite:////tmp/optuna.db", "postgresql+pg8000://u:pw@db/optuna"):
        assert with_postgres_timeouts(other) == other  # not libpq: its driver takes other arguments
    settings = Settings(training={"optuna_storage": "postgresql+psycopg://u:pw@db/optuna"})
    assert "tcp_user_timeout=10000" in settings.optuna_storage


def test_passwords_are_masked_in_urls_shown_to_people() -> None:
    assert (
        without_password("postgresql://u:p%40ss@db:5432/optuna?x=1")
        == "postgresql://u:***@db:5432/optuna?x=1"
    )
    assert without_password("postgresql://u@db/optuna") == "postgresql://u@db/optuna"
    assert without_password("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
