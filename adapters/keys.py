"""Where the decision signing keys come from: the settings, else the key files of the state folder.

The private key signs decisions (flows on the worker, the operator's command line); the API verifies with
the public keys only. Outside local mode the keys come from the settings (``REGGAETON_SIGNING__*``: an
environment variable or a secret). In local mode ``reggaeton up`` creates the pair in
``<state>/keys`` (the folder 0700, the private key 0600), and a decider creates it there when missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Final

from reggaeton import decision_record
from reggaeton.decision_record import RecordError, SigningKey, VerifyKeys
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

PRIVATE_FILE: Final = "decision-signing.key"
PUBLIC_FILE: Final = "decision-verify.pub"
# A private key file another process is still writing is read again for this long.
_PARTIAL_WAIT_S: Final = 2.0


class KeyUnavailable(RuntimeError):
    """No usable key; the message says which setting or file to provide."""


def private_path(settings: Settings) -> Path:
    """The private key file (used when ``signing.private_key`` is not set)."""
    return settings.signing_key_dir / PRIVATE_FILE


def public_path(settings: Settings) -> Path:
    """The public key file (used when ``signing.public_keys`` is not set)."""
    return settings.signing_key_dir / PUBLIC_FILE


def _read_private(path: Path) -> SigningKey | None:
    deadline = time.monotonic() + _PARTIAL_WAIT_S
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return decision_record.load_signing_key(text)
        except RecordError:
            if time.monotonic() > deadline:  # not a half-written file: a wrong one
                raise
            time.sleep(0.05)


def write_public(settings: Settings, key: SigningKey) -> None:
    """Write the public half where the API of this state folder reads it (unless it is already there)."""
    settings.signing_key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = public_path(settings)
    if path.is_file() and path.read_text().strip() == key.public_text():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(key.public_text() + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def ensure_local_keys(settings: Settings) -> SigningKey:
    """The state folder's key pair, created when missing (the first process to create it wins).

    Raises:
        KeyUnavailable: the key file holds something that is not a private key.
    """
    folder = settings.signing_key_dir
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = private_path(settings)
    key = _read_private(path)
    if key is None:
        created = decision_record.generate()
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile: use theirs
            key = _read_private(path)
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(created.private_text() + "\n")
            key = created
            logger.info("created the decision signing key %s (key id %s)", path, key.key_id)
    if key is None:
        raise KeyUnavailable(f"{path} vanished while it was read")
    write_public(settings, key)
    return key


def signing_key(settings: Settings) -> SigningKey:
    """The private key that signs decisions.

    Raises:
        KeyUnavailable: none is configured (outside local mode), or it is not a private key.
    """
    configured = settings.signing.private_key
    try:
        if configured is not None:
            return decision_record.load_signing_key(configured.get_secret_value())
        if settings.mode == "local":
            return ensure_local_keys(settings)
        key = _read_private(private_path(settings))
    except RecordError as exc:
        raise KeyUnavailable(f"the decision signing key is unusable: {exc}") from None
    if key is None:
        raise KeyUnavailable(
            "no decision signing key: set REGGAETON_SIGNING__PRIVATE_KEY (the promoting side's secret) "
            f"or put it in {private_path(settings)}"
        )
    return key


def verify_keys(settings: Settings) -> VerifyKeys:
    """The public keys the API trusts (empty when none is configured yet).

    Raises:
        KeyUnavailable: a configured key is not a public key.
    """
    text = settings.signing.public_keys
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            text = public_path(settings).read_text()
    try:
        return VerifyKeys.parse(text or "")
    except RecordError as exc:
        raise KeyUnavailable(f"REGGAETON_SIGNING__PUBLIC_KEYS: {exc}") from None


def decider_keys(settings: Settings, key: SigningKey) -> VerifyKeys:
    """What a decider trusts when it reads earlier records: the configured public keys and its own."""
    return VerifyKeys({**verify_keys(settings).keys, key.key_id: key.public})
