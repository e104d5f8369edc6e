"""Decision records in a real SQLite registry, and the signing keys of the state folder."""

from __future__ import annotations

import stat

import pytest
from mlflow import MlflowClient

from adapters import decisions, keys, registry
from reggaeton import decision_record, names
from reggaeton.settings import Settings


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One SQLite registry for the module (creating one costs seconds); each test has its own model."""
    return Settings(state_dir=tmp_path_factory.mktemp("records") / "state")


def _registry(settings: Settings, model: str, versions: int) -> MlflowClient:
    """A registered model with bare versions (no artifacts: only their tags and aliases are read here)."""
    client = registry.connect(settings)
    client.create_registered_model(model)
    for _ in range(versions):
        client.create_model_version(model, source=(settings.state_path / "none").as_uri())
    return client


def test_local_keys_are_created_once_private_to_the_user(settings: Settings) -> None:
    key = keys.ensure_local_keys(settings)
    private, public = keys.private_path(settings), keys.public_path(settings)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.signing_key_dir.stat().st_mode) == 0o700
    assert public.read_text().strip() == key.public_text()
    assert keys.ensure_local_keys(settings).key_id == key.key_id == keys.signing_key(settings).key_id
    assert keys.verify_keys(settings).ids == (key.key_id,)


def test_outside_local_mode_keys_come_from_the_settings(settings: Settings) -> None:
    production = settings.model_copy(update={"mode": "production"})
    with pytest.raises(keys.KeyUnavailable, match="REGGAETON_SIGNING__PRIVATE_KEY"):
        keys.signing_key(production)  # never created on the fly
    assert not keys.private_path(settings).exists()
    pair = decision_record.generate()
    configured = production.model_copy(
        update={"signing": production.signing.model_copy(update={"public_keys": pair.private_text()})}
    )
    with pytest.raises(keys.KeyUnavailable, match="this is a private key"):
        keys.verify_keys(configured)  # a private key handed to the API is refused, not used


def test_sequence_counts_past_every_record_and_the_model_counter(store: Settings) -> None:
    model = "sequence"
    client = _registry(store, model, 3)
    key = keys.ensure_local_keys(store)
    assert decisions.next_sequence(client, model) == 1
    fields = {
        "model": model,
        "action": decision_record.MANUAL,
        "outcome": decision_record.PROMOTED,
        "previous_champion": None,
        "evaluation": None,
        "evidence": decision_record.evidence_of({}, "test"),
        "policy": {},
        "decided_by": "test",
        "decided_at": decisions.now(),
    }
    assert decisions.sign_decision(client, key, version="1", **fields).sequence == 1
    assert decisions.sign_decision(client, key, version="2", **fields).sequence == 2
    # The counter survives a version's record being removed (deleted tags do not lower the number).
    client.delete_model_version_tag(model, "2", names.Tag.DECISION_RECORD)
    assert decisions.next_sequence(client, model) == 3
    # And a record numbered past the counter (written by older code) is counted too.
    client.set_registered_model_tag(model, names.Tag.DECISION_SEQUENCE, "1")
    assert decisions.next_sequence(client, model) == 2
    assert decisions.sign_decision(client, key, version="3", **fields).sequence == 2
    latest = decisions.latest_authorized(client, model, keys.verify_keys(store))
    assert latest is not None and str(latest[0].version) == "3"


def test_the_champion_of_an_older_registry_is_adopted_once(store: Settings) -> None:
    model = "adopted"
    client = _registry(store, model, 2)
    key = keys.ensure_local_keys(store)
    assert decisions.adopt_unsigned_champion(client, key, model, "up") is None  # no champion
    client.set_registered_model_alias(model, names.CHAMPION, "1")

    adopted = decisions.adopt_unsigned_champion(client, key, model, "reggaeton up (upgrade)")

    assert adopted is not None and (adopted.version, adopted.sequence) == ("1", 1)
    assert adopted.evidence.summary == decisions.ADOPTED_SUMMARY
    champion = client.get_model_version_by_alias(model, names.CHAMPION)
    assert decisions.authorizing_record(champion, keys.verify_keys(store), model) == adopted
    # Once the registry has records, an unsigned champion is one moved by hand: never adopted.
    client.set_registered_model_alias(model, names.CHAMPION, "2")
    assert decisions.adopt_unsigned_champion(client, key, model, "up") is None
    assert names.Tag.DECISION_RECORD not in client.get_model_version(model, "2").tags
