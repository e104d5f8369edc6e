"""A replica follows the challenger only as a signed decision says (serving/source.py, live_role).

A real SQLite registry: the challenger alias with a signed shadow or canary record is followed (the
canary's share read from the record); a plain tag, a record signed with an untrusted key, a record
copied from another version, a rejected one, or one older than the champion's decision is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_support import make_settings, register_version

from adapters import decisions, keys, registry
from reggaeton import decision_record, live, names
from reggaeton.settings import Settings
from serving.source import RegistrySource


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("live-source"))


def _sign(
    settings: Settings,
    version: str,
    outcome: str,
    share: float | None = None,
    key: decision_record.SigningKey | None = None,
) -> decision_record.DecisionRecord:
    policy = {} if share is None else {live.CANARY_SHARE: share}
    return decisions.sign_decision(
        registry.connect(settings),
        key or keys.ensure_local_keys(settings),
        model=names.MODEL_NAME,
        version=version,
        action=decision_record.CANARY_STEP if share is not None else decision_record.GATE,
        outcome=outcome,
        previous_champion=None,
        evaluation=None,
        evidence=decision_record.evidence_of({"test": version}, "live source tests"),
        policy=policy,
        decided_by="tests",
        decided_at=decisions.now(),
    )


def _challenger(settings: Settings, version: str) -> None:
    registry.connect(settings).set_registered_model_alias(names.MODEL_NAME, names.CHALLENGER, version)


def test_the_challenger_is_followed_as_its_signed_record_says(settings: Settings) -> None:
    source = RegistrySource(settings)
    version = register_version(settings, c=0.5)
    _challenger(settings, version)
    assert source.live_role(None) is None  # registered, no decision about it

    client = registry.connect(settings)
    client.set_model_version_tag(names.MODEL_NAME, version, names.Tag.LIVE_STATE, live.CANARY)
    client.set_model_version_tag(names.MODEL_NAME, version, names.Tag.CANARY_SHARE, "1.0")
    assert source.live_role(None) is None  # tags anyone can write are not followed

    shadow = _sign(settings, version, live.SHADOW)
    role = source.live_role(None)
    assert role is not None and (role.version, role.share, role.sequence) == (version, 0.0, shadow.sequence)

    canary = _sign(settings, version, live.CANARY, share=0.25)
    role = source.live_role(shadow.sequence)
    assert role is not None and (role.share, role.sequence) == (0.25, canary.sequence)
    assert source.live_role(canary.sequence) is None  # not newer than the champion's decision

    _sign(settings, version, live.REJECTED, share=0.0)
    assert source.live_role(None) is None  # the live gate rejected it: the replicas stop


def test_a_record_not_signed_by_the_deciding_side_or_not_about_this_version_is_not_followed(
    settings: Settings, tmp_path: Path
) -> None:
    source = RegistrySource(settings)
    version = register_version(settings, c=0.7)
    _challenger(settings, version)
    _sign(settings, version, live.CANARY, share=1.0, key=decision_record.generate())  # an untrusted key
    assert source.live_role(None) is None

    other = register_version(settings, c=0.9)
    _sign(settings, other, live.CANARY, share=1.0)
    client = registry.connect(settings)
    tags = client.get_model_version(names.MODEL_NAME, other).tags
    for tag in (names.Tag.DECISION_RECORD, names.Tag.DECISION_SIGNATURE):  # copied onto this version
        client.set_model_version_tag(names.MODEL_NAME, version, tag, tags[tag])
    assert source.live_role(None) is None

    _sign(settings, version, live.SHADOW)
    role = source.live_role(None)
    assert role is not None and role.share == 0.0
