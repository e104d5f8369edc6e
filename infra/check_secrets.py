"""The stack's first job: refuse to start while a secret is missing, an example value, or unusable.

``python -m infra.check_secrets`` reads the secret variables of :data:`infra.services.VARIABLES` from the
environment and exits 1, naming each variable, when a required one is missing, any is a value published
in this repository (``.env.example``'s ``change-me``, the local placeholder), an MLflow password is
shorter than MLflow accepts, the feedback token equals the admin token, or the decision verify key is not
the signing key's public half. docker-compose starts every other service after it succeeds
(``service_completed_successfully``): its interpolation can require a value but not compare one. The
Postgres superuser password is not given to it (no application container holds it): the database
refuses its own example value (``infra/postgres/start.sh``).

``python -m infra.check_secrets --new-env [FILE]`` writes a ``.env`` (default ``.env``) from
``.env.example`` with every example secret replaced by a fresh random one and a new decision key pair;
values already set in that file are kept, so it also fills in the variables an upgrade added.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from infra.services import VARIABLES
from reggaeton import decision_record
from reggaeton.decision_record import RecordError
from reggaeton.settings import EXAMPLE_SECRETS

logger = logging.getLogger(__name__)

# Checked by the database itself: no application container holds it.
CHECKED_BY_THE_DATABASE: Final = frozenset({"POSTGRES_PASSWORD"})
# MLflow's basic-auth app refuses shorter passwords (its admin's at start, the accounts' at creation).
MLFLOW_MIN_PASSWORD: Final = 12
SIGNING_KEY: Final = "DECISION_SIGNING_KEY"
VERIFY_KEY: Final = "DECISION_VERIFY_KEY"
EXAMPLE_FILE: Final = Path(__file__).resolve().parents[1] / ".env.example"


def refused(environ: Mapping[str, str]) -> list[str]:
    """Why each secret variable in ``environ`` cannot be used (empty when all are real secrets)."""
    problems = []
    for name, variable in VARIABLES.items():
        if not variable.secret or name in CHECKED_BY_THE_DATABASE:
            continue
        value = environ.get(name, "")
        if not value:
            if variable.default is None:
                problems.append(f"{name} is not set")
        elif value in EXAMPLE_SECRETS:
            problems.append(f"{name} is still the example value {value!r}: set a secret of your own")
        elif name.startswith("MLFLOW_") and name.endswith("_PASSWORD") and len(value) < MLFLOW_MIN_PASSWORD:
            problems.append(
                f"{name} has {len(value)} characters; MLflow needs at least {MLFLOW_MIN_PASSWORD}"
            )
    admin, feedback = environ.get("ADMIN_TOKEN"), environ.get("FEEDBACK_TOKEN")
    if admin and admin == feedback:
        problems.append(
            "FEEDBACK_TOKEN equals ADMIN_TOKEN: give each its own value (one credential per purpose)"
        )
    problems.extend(_key_problems(environ))
    return problems


def _key_problems(environ: Mapping[str, str]) -> list[str]:
    """The signing key must be a private key, and the verify key(s) must include its public half."""
    private, public = environ.get(SIGNING_KEY, ""), environ.get(VERIFY_KEY, "")
    if not private or private in EXAMPLE_SECRETS:
        return []  # already named above
    try:
        key = decision_record.load_signing_key(private)
    except RecordError as exc:
        return [f"{SIGNING_KEY}: {exc}"]
    if not public or public in EXAMPLE_SECRETS:
        return [f"{VERIFY_KEY} is not set: the API verifies decisions with it ({key.public_text()})"]
    try:
        trusted = decision_record.VerifyKeys.parse(public)
    except RecordError as exc:
        return [f"{VERIFY_KEY}: {exc}"]
    if key.key_id not in trusted.keys:
        return [
            f"{VERIFY_KEY} does not hold the public half of {SIGNING_KEY} (key {key.key_id}): the API would "
            f"serve no decided champion; it is {key.public_text()}"
        ]
    return []


def new_env(example: str, existing: Mapping[str, str]) -> str:
    """``example``'s lines, each example secret replaced by a fresh one (or by ``existing``'s value)."""
    key = decision_record.generate()
    fresh = {SIGNING_KEY: key.private_text(), VERIFY_KEY: key.public_text()}
    if existing.get(SIGNING_KEY, "") not in ("", *EXAMPLE_SECRETS):
        fresh.pop(SIGNING_KEY)
        fresh.pop(VERIFY_KEY)  # the pair stays together
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if not sep or line.lstrip().startswith("#"):
            lines.append(line)
            continue
        name = name.strip()
        kept = existing.get(name, "")
        if kept and kept not in EXAMPLE_SECRETS:
            value = kept
        elif name in fresh:
            value = fresh[name]
        elif value in EXAMPLE_SECRETS:
            value = secrets.token_urlsafe(24)
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def _read_env(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pairs = (
        line.partition("=") for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    return {name.strip(): value.strip() for name, sep, value in pairs if sep}


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every secret is usable, else 1 after logging each problem (or write a new .env)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--new-env", nargs="?", const=".env", metavar="FILE", help="write a .env with fresh secrets"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.new_env:
        path = Path(args.new_env)
        text = new_env(EXAMPLE_FILE.read_text(), _read_env(path))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)  # readable by its owner only, also when it replaces an older .env
        logger.info("wrote %s (mode 0600): keep it out of version control", path)
        return 0
    problems = refused(os.environ)
    for problem in problems:
        logger.error("refusing to start the stack: %s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
