"""The decision record: canonical form, signatures, tampering, replay (pure: no registry, no files)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reggaeton import decision_record as dr

MODEL = "reggaeton-classifier"


def _record(**changes: Any) -> dr.DecisionRecord:
    fields: dict[str, Any] = {
        "model": MODEL,
        "version": "3",
        "action": dr.GATE,
        "outcome": dr.PROMOTED,
        "previous_champion": "2",
        "sequence": 7,
        "evaluation": "ab" * 32,
        "evidence": dr.evidence_of({"pr_auc": 0.71, "slices": []}, "better beyond noise"),
        "policy": {"min_gain": 0.0, "confidence": 0.95},
        "decided_by": "gate",
        "decided_at": "2026-12-06T12:00:00+00:00",
    }
    fields.update(changes)
    return dr.new_record(**fields)


def test_canonical_form_is_sorted_compact_ascii_and_versioned() -> None:
    record = _record(decided_by="José")
    text = record.text()
    assert " " not in text.replace("better beyond noise", "")
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data["schema"] == dr.SCHEMA == 1
    assert set(data) == {
        "schema",
        "model",
        "version",
        "action",
        "outcome",
        "previous_champion",
        "sequence",
        "evaluation",
        "evidence",
        "policy",
        "decided_by",
        "decided_at",
    }
    assert "\\u00e9" in text  # non-ASCII escaped: one byte form
    assert dr.parse(text) == record
    # The same record built with its policy's keys in another order has the same bytes.
    assert _record(decided_by="José", policy={"confidence": 0.95, "min_gain": 0.0}).text() == text


def test_parse_refuses_a_record_not_in_canonical_form() -> None:
    text = _record().text()
    spaced = json.dumps(json.loads(text), indent=1)
    with pytest.raises(dr.RecordError, match="canonical"):
        dr.parse(spaced)
    with pytest.raises(dr.RecordError, match="lacks sequence"):
        dr.parse(dr.canonical_json({k: v for k, v in json.loads(text).items() if k != "sequence"}).decode())
    with pytest.raises(dr.RecordError, match="unknown fields"):
        dr.parse(dr.canonical_json({**json.loads(text), "note": "x"}).decode())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"action": "forced"}, "unknown action"),
        ({"sequence": 0}, "positive integer"),
        ({"sequence": True}, "positive integer"),
        ({"version": ""}, "version must be"),
        ({"policy": {"x": float("nan")}}, "canonically"),
    ],
)
def test_a_record_outside_the_contract_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(dr.RecordError, match=message):
        _record(**change)


def test_evidence_digest_covers_every_number_and_tolerates_nan() -> None:
    base = {"overall": {"pr_auc": 0.71}, "slices": [{"name": "tempo>=120", "low": -0.01}]}
    same = {"slices": [{"low": -0.01, "name": "tempo>=120"}], "overall": {"pr_auc": 0.71}}
    assert dr.evidence_digest(base) == dr.evidence_digest(same)
    changed = {**base, "slices": [{"name": "tempo>=120", "low": -0.02}]}
    assert dr.evidence_digest(changed) != dr.evidence_digest(base)
    assert dr.evidence_digest({"brier": float("nan")}).startswith("sha256:")
    assert len(dr.evidence_of(base, "x" * 2000).summary) == dr.SUMMARY_MAX


def test_signed_record_verifies_and_any_change_breaks_the_signature() -> None:
    key = dr.generate()
    record = _record()
    signature = key.sign(record)
    keys = dr.VerifyKeys.of([key.public])
    assert signature.startswith(f"{key.key_id}:")
    assert keys.verify(record.text(), signature) == record

    for tampered in (
        _record(version="4"),
        _record(sequence=8),
        _record(outcome="rejected"),
        _record(evidence=dr.evidence_of({"pr_auc": 0.72, "slices": []}, "better beyond noise")),
    ):
        with pytest.raises(dr.RecordError, match="does not match"):
            keys.verify(tampered.text(), signature)


def test_a_signature_by_another_key_is_refused_naming_the_key() -> None:
    ours, theirs = dr.generate(), dr.generate()
    record = _record()
    with pytest.raises(dr.RecordError, match=f"signed by key {theirs.key_id}, which is not trusted"):
        dr.VerifyKeys.of([ours.public]).verify(record.text(), theirs.sign(record))
    # A forged signature under our key id does not verify either.
    forged = f"{ours.key_id}:{theirs.sign(record).split(':', 1)[1]}"
    with pytest.raises(dr.RecordError, match="does not match"):
        dr.VerifyKeys.of([ours.public]).verify(record.text(), forged)
    with pytest.raises(dr.RecordError, match="no public key"):
        dr.VerifyKeys().verify(record.text(), ours.sign(record))


def test_keys_round_trip_through_their_compact_text_and_are_not_confused() -> None:
    key = dr.generate()
    again = dr.load_signing_key(key.private_text())
    record = _record()
    assert again.sign(record) == key.sign(record)  # Ed25519 signatures are deterministic
    public = dr.load_public_key(key.public_text())
    assert dr.key_id(public) == key.key_id
    with pytest.raises(dr.RecordError, match="private key"):
        dr.load_public_key(key.private_text())
    with pytest.raises(dr.RecordError, match="public key"):
        dr.load_signing_key(key.public_text())
    with pytest.raises(dr.RecordError, match="32 bytes"):
        dr.load_public_key(dr.PUBLIC_PREFIX + "AAAA")
    # Several keys (a rotation): either verifies.
    other = dr.generate()
    keys = dr.VerifyKeys.parse(f"{key.public_text()}, {other.public_text()}")
    assert keys.ids == tuple(sorted((key.key_id, other.key_id)))
    assert keys.verify(record.text(), other.sign(record)) == record


def test_authorize_champion_checks_model_version_outcome_and_sequence() -> None:
    key = dr.generate()
    keys = dr.VerifyKeys.of([key.public])
    record = _record()
    text, signature = record.text(), key.sign(record)

    assert dr.authorize_champion(text, signature, keys, model=MODEL, version="3", served_sequence=6) == record
    assert dr.authorize_champion(text, signature, keys, model=MODEL, version="3") == record

    def refused(message: str, **kwargs: Any) -> None:
        arguments: dict[str, Any] = {
            "text": text,
            "signature": signature,
            "model": MODEL,
            "version": "3",
            "served_sequence": None,
        }
        arguments.update(kwargs)
        with pytest.raises(dr.RecordError, match=message):
            dr.authorize_champion(
                arguments["text"],
                arguments["signature"],
                keys,
                model=arguments["model"],
                version=arguments["version"],
                served_sequence=arguments["served_sequence"],
            )

    refused("has no decision record", text=None)
    refused("is not signed", signature="")
    # A valid record copied onto another version, or another model, authorizes nothing there.
    refused("not reggaeton-classifier version 4", version="4")
    refused("not other version 3", model="other")
    # Replay: an older decision (even a genuine one) cannot take the place of a newer one.
    refused("not newer than decision 7", served_sequence=7)
    refused("not newer than decision 9", served_sequence=9)
    rejected = _record(outcome="rejected")
    refused("does not make version 3 champion", text=rejected.text(), signature=key.sign(rejected))
