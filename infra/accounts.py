"""MLflow's accounts of the container stacks: one per service, each with the least MLflow can express.

The MLflow server runs its basic-auth app with no default permission (``infra/mlflow/basic_auth.ini``).
The bootstrap job, as MLflow's admin, creates the experiments and the registered model, then one account
per service with the password of its variable (a changed password is set again: rotation), and grants
each exactly what it needs on those resources:

| account    | reggaeton-training | reggaeton-monitoring | reggaeton-classifier (model) | its versions   |
|------------|--------------------|----------------------|------------------------------|----------------|
| training   | EDIT (runs, models)|                      | EDIT (register versions)     |                |
| promotion  | READ; EDIT on runs |                      | EDIT (tags, aliases)         |                |
| monitoring | READ (reference)   | EDIT (its runs)      | READ                         | EDIT (tags)    |
| serving    | READ (models)      |                      | READ                         |                |

The monitor puts its state on the version it watched (``names.Tag.MONITORING_*``, read by the API's
/metrics): EDIT on the versions tier (MLflow grants it for every version, ``*``, of the models an
account can read: here ours) lets it set a version's tags, and nothing on the model itself: no alias,
no new version, no deletion. The gate attaches its decision's files (report, record, slices plot) to the
challenger's training run: EDIT on the runs tier (every run, ``*``, of the experiments an account can
read: here the training one) lets the promotion account write to existing runs, not create or delete one
(nor change the experiment); it could also change a training run's metrics or tags, as the training account
can: the gate reads them, and its signed decision record keeps the figures it decided on.

What MLflow cannot express (the reason for signed decisions): EDIT on a registered model allows both
registering versions and moving aliases, so the training account could move ``champion``; the API
serves no version without a signed decision. EDIT cannot delete a version's tag or an alias (MANAGE,
which could delete the model, can): the flows clear tags instead (``adapters.live_state.set_tags``).
Without workspaces, any account may create experiments and registered models of its own (not touch ours).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from mlflow.exceptions import MlflowException

from reggaeton import names
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

EXPERIMENT: Final = "experiment"
REGISTERED_MODEL: Final = "registered_model"
REGISTERED_MODEL_VERSION: Final = "registered_model_version"  # a tier MLflow grants only as a whole: "*"
RUN: Final = "run"  # the same
READ: Final = "READ"
EDIT: Final = "EDIT"

# account -> {(resource type, which resource): permission}; resources by role, resolved from settings.
GRANTS: Final[Mapping[str, Mapping[tuple[str, str], str]]] = {
    names.TRAINING_ACCOUNT: {(EXPERIMENT, "training"): EDIT, (REGISTERED_MODEL, "model"): EDIT},
    names.PROMOTION_ACCOUNT: {
        (EXPERIMENT, "training"): READ,
        (RUN, "*"): EDIT,
        (REGISTERED_MODEL, "model"): EDIT,
    },
    names.MONITORING_ACCOUNT: {
        (EXPERIMENT, "training"): READ,
        (EXPERIMENT, "monitoring"): EDIT,
        (REGISTERED_MODEL, "model"): READ,
        (REGISTERED_MODEL_VERSION, "*"): EDIT,
    },
    names.SERVING_ACCOUNT: {(EXPERIMENT, "training"): READ, (REGISTERED_MODEL, "model"): READ},
}


def _resources(settings: Settings) -> dict[tuple[str, str], str]:
    """The resource ids (experiment id, model name), created when missing (as the admin: it owns them)."""
    from adapters import registry

    client = registry.connect(settings)
    model = settings.mlflow.model_name
    try:
        client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model, description=registry.MODEL_DESCRIPTION)
    return {
        (EXPERIMENT, "training"): registry.ensure_experiment(
            client, settings.mlflow.training_experiment, settings
        ),
        (EXPERIMENT, "monitoring"): registry.ensure_experiment(
            client, settings.mlflow.monitoring_experiment, settings
        ),
        (REGISTERED_MODEL, "model"): model,
        (REGISTERED_MODEL_VERSION, "*"): "*",
        (RUN, "*"): "*",
    }


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def ensure_accounts(settings: Settings, passwords: Mapping[str, str]) -> dict[str, str]:
    """Create or update each account (its password) and set its grants; idempotent.

    Call with MLflow's admin credentials in the environment (MLFLOW_TRACKING_USERNAME/PASSWORD).

    Args:
        settings: The settings (MLflow's URL, the experiment and model names).
        passwords: Account -> password, for the accounts of :data:`GRANTS` to set up.

    Returns:
        Account -> "created" or "updated".
    """
    from mlflow.server.auth.client import AuthServiceClient

    resources = _resources(settings)
    auth = AuthServiceClient(settings.tracking_uri)
    outcome = {}
    for account, password in passwords.items():
        try:
            auth.get_user(account)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            auth.create_user(account, password)
            outcome[account] = "created"
        else:
            auth.update_user_password(account, password)  # the variable's value wins: rotation
            outcome[account] = "updated"
        for (kind, role), permission in GRANTS[account].items():
            resource = resources[(kind, role)]
            if auth.get_user_permission(account, kind, resource).permission == permission:
                continue
            try:
                auth.revoke_user_permission(account, kind, resource)
            except MlflowException as exc:
                if not _missing(exc):
                    raise
            auth.grant_user_permission(account, kind, resource, permission)
        logger.info("MLflow account %s %s: %s", account, outcome[account], dict(GRANTS[account]))
    return outcome


def service_passwords(settings: Settings) -> dict[str, str]:
    """The accounts whose passwords these settings hold (the bootstrap's: all four)."""
    found = {}
    for account in names.MLFLOW_ACCOUNTS:
        password = settings.mlflow.account_password(account)
        if password is not None:
            found[account] = password.get_secret_value()
    return found
