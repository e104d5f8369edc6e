"""The decision record: one canonical, versioned, signed document per promotion decision.

Every decision that can make a version champion (the gate, an operator's promote or rollback, and later
the live gate and canary steps) writes one record: which model and version, what was decided and by
which action, the champion it replaced, a sequence number strictly increasing per model, the
evaluation data's hash, a digest of the evidence (overall, slices, live) with a one-line summary, the
policy, who and when. The promoting side signs the record's canonical bytes with an Ed25519 private
key; the API verifies them with the public half and serves a version only when its record promotes
exactly that version and its sequence is newer than the one it serves (a copied or replayed record
fails). Nothing here reads files or talks to a registry: keys and records arrive as text.

Canonical form: UTF-8 JSON, keys sorted, no whitespace, ASCII escapes, no NaN. Compact key text:
``ed25519-private:<base64url>`` and ``ed25519-public:<base64url>`` (the raw 32-byte keys). A signature
is ``<key id>:<base64url>``, the key id being the first 16 hex digits of the public key's SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

SCHEMA: Final = 1

# Actions that decide about a version (the contract shared with the live gate and the canary).
GATE: Final = "gate"
MANUAL: Final = "manual"
ROLLBACK: Final = "rollback"
LIVE_GATE: Final = "live_gate"
CANARY_STEP: Final = "canary_step"
ACTIONS: Final = frozenset({GATE, MANUAL, ROLLBACK, LIVE_GATE, CANARY_STEP})

# The outcome that makes a version champion; every other outcome (rejected, a canary step that only
# moves a share of traffic) is recorded but serves nothing.
PROMOTED: Final = "promoted"
PROMOTING_OUTCOMES: Final = frozenset({PROMOTED})

PRIVATE_PREFIX: Final = "ed25519-private:"
PUBLIC_PREFIX: Final = "ed25519-public:"
SUMMARY_MAX: Final = 500  # characters of the evidence's summary kept in the record
KEY_ID_HEX: Final = 16

_FIELDS: Final = (
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
)


class RecordError(ValueError):
    """A record, key or signature that cannot be trusted; the message says why in one line."""


def canonical_json(value: Any, *, allow_nan: bool = False) -> bytes:
    """The one byte form of a JSON value: sorted keys, no whitespace, ASCII escapes.

    Args:
        value: JSON-ready data (dicts, lists, strings, numbers, booleans, None).
        allow_nan: Encode NaN and infinities as the tokens Python writes (evidence digests only: a
            metric can be NaN on a degenerate sample). The record itself never holds them.

    Raises:
        ValueError: a NaN or infinity where it is not allowed, or a value JSON cannot encode.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=allow_nan
    ).encode("ascii")


@dataclass(frozen=True)
class Evidence:
    """What a decision was based on: a digest of all of it and a summary people read."""

    digest: str  # "sha256:<hex>" of the evidence's canonical JSON
    summary: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready."""
        return {"digest": self.digest, "summary": self.summary}


def evidence_digest(evidence: Any) -> str:
    """``sha256:<hex>`` of the evidence's canonical JSON (e.g. ``promotion.Decision.to_dict()``)."""
    return "sha256:" + hashlib.sha256(canonical_json(evidence, allow_nan=True)).hexdigest()


def evidence_of(evidence: Any, summary: str) -> Evidence:
    """The record's evidence field: the digest of ``evidence`` and a summary cut to SUMMARY_MAX characters."""
    return Evidence(digest=evidence_digest(evidence), summary=" ".join(summary.split())[:SUMMARY_MAX])


@dataclass(frozen=True)
class DecisionRecord:
    """One decision, as signed. Build it with :func:`new_record`; read one with :func:`parse`."""

    model: str
    version: str
    action: str
    outcome: str
    previous_champion: str | None
    sequence: int
    evaluation: str | None  # the evaluation data's content hash (None: an operator's decision)
    evidence: Evidence
    policy: Mapping[str, Any]
    decided_by: str
    decided_at: str  # ISO 8601, UTC
    schema: int = SCHEMA

    @property
    def promotes(self) -> bool:
        """Whether this decision makes its version champion."""
        return self.outcome in PROMOTING_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        """The record's fields, JSON-ready."""
        return {
            "schema": self.schema,
            "model": self.model,
            "version": self.version,
            "action": self.action,
            "outcome": self.outcome,
            "previous_champion": self.previous_champion,
            "sequence": self.sequence,
            "evaluation": self.evaluation,
            "evidence": self.evidence.to_dict(),
            "policy": dict(self.policy),
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
        }

    def canonical(self) -> bytes:
        """The bytes that are signed."""
        return canonical_json(self.to_dict())

    def text(self) -> str:
        """The canonical form as text (what a registry tag holds)."""
        return self.canonical().decode("ascii")


def new_record(
    *,
    model: str,
    version: str,
    action: str,
    outcome: str,
    previous_champion: str | None,
    sequence: int,
    evaluation: str | None,
    evidence: Evidence,
    policy: Mapping[str, Any],
    decided_by: str,
    decided_at: str,
) -> DecisionRecord:
    """A record checked for the contract's shape (known action, positive sequence, encodable policy).

    Raises:
        RecordError: a field breaks the contract.
    """
    record = DecisionRecord(
        model=str(model),
        version=str(version),
        action=action,
        outcome=outcome,
        previous_champion=None if previous_champion is None else str(previous_champion),
        sequence=sequence,
        evaluation=evaluation,
        evidence=evidence,
        policy=dict(policy),
        decided_by=decided_by,
        decided_at=decided_at,
    )
    _check_shape(record)
    try:
        record.canonical()
    except ValueError as exc:
        raise RecordError(f"the record cannot be written canonically: {exc}") from None
    return record


def _check_shape(record: DecisionRecord) -> None:
    if record.schema != SCHEMA:
        raise RecordError(f"record schema {record.schema!r} is not supported (this code reads {SCHEMA})")
    if record.action not in ACTIONS:
        raise RecordError(f"unknown action {record.action!r} (one of {', '.join(sorted(ACTIONS))})")
    if isinstance(record.sequence, bool) or not isinstance(record.sequence, int) or record.sequence < 1:
        raise RecordError(f"sequence must be a positive integer, not {record.sequence!r}")
    for name in ("model", "version", "outcome", "decided_by", "decided_at"):
        if not isinstance(getattr(record, name), str) or not getattr(record, name):
            raise RecordError(f"{name} must be a non-empty string")
    if not record.evidence.digest.startswith("sha256:"):
        raise RecordError("evidence digest must be sha256:<hex>")


def parse(text: str) -> DecisionRecord:
    """Read a record from its canonical text (as stored), checking that it IS canonical.

    A record re-encoded in any other form (spaces, key order) is refused: the signature covers the
    canonical bytes, and only one form is accepted so two texts never mean the same record.

    Raises:
        RecordError: not JSON, not canonical, or a field missing or of the wrong type.
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise RecordError(f"the record is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("the record is not a JSON object")
    missing = [name for name in _FIELDS if name not in data]
    if missing:
        raise RecordError(f"the record lacks {', '.join(missing)}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise RecordError(f"the record has unknown fields {', '.join(unknown)}")
    evidence = data["evidence"]
    if not isinstance(evidence, dict) or not {"digest", "summary"} <= set(evidence):
        raise RecordError("the record's evidence must hold a digest and a summary")
    if not isinstance(data["policy"], dict):
        raise RecordError("the record's policy must be an object")
    record = DecisionRecord(
        schema=data["schema"],
        model=data["model"],
        version=data["version"],
        action=data["action"],
        outcome=data["outcome"],
        previous_champion=data["previous_champion"],
        sequence=data["sequence"],
        evaluation=data["evaluation"],
        evidence=Evidence(digest=str(evidence["digest"]), summary=str(evidence["summary"])),
        policy=data["policy"],
        decided_by=data["decided_by"],
        decided_at=data["decided_at"],
    )
    _check_shape(record)
    if record.text() != text:
        raise RecordError("the record is not in canonical form")
    return record


# --- keys ------------------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise RecordError(f"{what} is not base64url") from None


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (named in each signature)."""
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


@dataclass(frozen=True)
class SigningKey:
    """The promoting side's private key."""

    private: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> Ed25519PublicKey:
        """The public half."""
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        """The id of the public half."""
        return key_id(self.public)

    def sign(self, record: DecisionRecord) -> str:
        """The signature of the record's canonical bytes, as ``<key id>:<base64url>``."""
        return f"{self.key_id}:{_b64(self.private.sign(record.canonical()))}"

    def private_text(self) -> str:
        """The compact private key text (a secret)."""
        raw = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return PRIVATE_PREFIX + _b64(raw)

    def public_text(self) -> str:
        """The compact public key text."""
        return public_text(self.public)


def public_text(public: Ed25519PublicKey) -> str:
    """The compact public key text."""
    return PUBLIC_PREFIX + _b64(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def generate() -> SigningKey:
    """A new random key pair."""
    return SigningKey(Ed25519PrivateKey.generate())


def _raw_key(text: str, kind: str, wrong: str) -> bytes:
    """The 32 raw bytes of a compact ``kind`` ("private" or "public") key; ``wrong``: the other kind given."""
    prefix, other = (PRIVATE_PREFIX, PUBLIC_PREFIX) if kind == "private" else (PUBLIC_PREFIX, PRIVATE_PREFIX)
    text = text.strip()
    if text.startswith(other):
        raise RecordError(wrong)
    if not text.startswith(prefix):
        raise RecordError(f"a {kind} key starts with {prefix!r}")
    raw = _unb64(text.removeprefix(prefix), f"the {kind} key")
    if len(raw) != 32:
        raise RecordError(f"an Ed25519 {kind} key has 32 bytes, not {len(raw)}")
    return raw


def load_signing_key(text: str) -> SigningKey:
    """A private key from its compact text.

    Raises:
        RecordError: not a compact Ed25519 private key (a public key given instead is named as such).
    """
    raw = _raw_key(text, "private", "this is a public key; signing needs the private key")
    return SigningKey(Ed25519PrivateKey.from_private_bytes(raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key from its compact text.

    Raises:
        RecordError: not a compact Ed25519 public key (a private key given instead is named as such).
    """
    raw = _raw_key(text, "public", "this is a private key; give the API only the public key")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class VerifyKeys:
    """The public keys a verifier trusts, by key id (several during a key rotation)."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, publics: Iterable[Ed25519PublicKey]) -> VerifyKeys:
        """Trust these keys."""
        return cls({key_id(public): public for public in publics})

    @classmethod
    def parse(cls, text: str) -> VerifyKeys:
        """Keys from compact texts separated by commas or whitespace.

        Raises:
            RecordError: one of them is not a public key.
        """
        return cls.of(load_public_key(part) for part in text.replace(",", " ").split())

    @property
    def ids(self) -> tuple[str, ...]:
        """The trusted key ids."""
        return tuple(sorted(self.keys))

    def __bool__(self) -> bool:
        return bool(self.keys)

    def verify(self, text: str, signature: str) -> DecisionRecord:
        """The record, once its text is canonical and signed by one of these keys.

        Raises:
            RecordError: no key, unknown key id, bad signature, or a record that is not canonical.
        """
        if not self.keys:
            raise RecordError("no public key to verify with")
        kid, sep, encoded = signature.strip().partition(":")
        if not sep:
            raise RecordError("the signature is not <key id>:<base64url>")
        public = self.keys.get(kid)
        if public is None:
            raise RecordError(f"signed by key {kid}, which is not trusted (trusted: {', '.join(self.ids)})")
        try:
            public.verify(_unb64(encoded, "the signature"), text.encode("utf-8"))
        except InvalidSignature:
            raise RecordError(f"the signature does not match the record (key {kid})") from None
        return parse(text)


def authorize_champion(
    text: str | None,
    signature: str | None,
    keys: VerifyKeys,
    *,
    model: str,
    version: str,
    served_sequence: int | None = None,
) -> DecisionRecord:
    """The record that authorizes ``version`` of ``model`` as champion, or why nothing does.

    Args:
        text: The record's canonical text stored with the version (None: it has none).
        signature: Its signature (None: none).
        keys: The trusted public keys.
        model: The registered model the alias belongs to.
        version: The version the alias points at.
        served_sequence: The sequence of the record of the version being served; a newer champion's
            must be greater (a replayed older decision is refused). None: nothing served yet.

    Raises:
        RecordError: one line saying why the version is not authorized.
    """
    if not text:
        raise RecordError(f"version {version} has no decision record")
    if not signature:
        raise RecordError(f"version {version}'s decision record is not signed")
    record = keys.verify(text, signature)
    if record.model != model or record.version != str(version):
        raise RecordError(
            f"the record decides about {record.model} version {record.version}, not {model} version {version}"
        )
    if not record.promotes:
        raise RecordError(
            f"the record's outcome is {record.outcome!r}: it does not make version {version} champion"
        )
    if served_sequence is not None and record.sequence <= served_sequence:
        raise RecordError(
            f"decision {record.sequence} is not newer than decision {served_sequence} of the served version"
        )
    return record
