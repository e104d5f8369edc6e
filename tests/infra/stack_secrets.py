"""Secret values for the container stack's tests: every required secret, and a real decision key pair."""

from __future__ import annotations

from infra.services import VARIABLES
from reggaeton import decision_record

SIGNING = decision_record.generate()


def secret_values(tag: str) -> dict[str, str]:
    """Every required secret variable (.env names) with a distinct value of at least 12 characters."""
    values = {
        name: f"{tag}-{name.lower().replace('_', '-')}-4f1"
        for name, variable in VARIABLES.items()
        if variable.secret and variable.default is None
    }
    values["DECISION_SIGNING_KEY"] = SIGNING.private_text()
    values["DECISION_VERIFY_KEY"] = SIGNING.public_text()
    return values


def config_values(tag: str) -> dict[str, str]:
    """The same as Pulumi config (config keys)."""
    return {VARIABLES[name].config_key: value for name, value in secret_values(tag).items()}


SECRET_CONFIG_KEYS = [v.config_key for v in VARIABLES.values() if v.secret]
