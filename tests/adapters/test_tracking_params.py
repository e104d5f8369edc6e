"""What the training run records about its settings, on a real SQLite tracking store."""

from __future__ import annotations

from adapters import registry, tracking
from reggaeton.data import split, synthetic_dataset
from reggaeton.settings import Settings


def test_the_training_run_records_its_optuna_storage_without_the_password(settings: Settings) -> None:
    training = settings.training.model_copy(update={"optuna_storage": "postgresql://u:s3cret@db:5432/optuna"})
    settings = settings.model_copy(update={"training": training})
    dataset = synthetic_dataset(1000, seed=1)
    client = registry.connect(settings)
    run = tracking.start_training_run(client, settings, dataset, split(dataset, 0.3, seed=1), "flow-run")
    params = client.get_run(run.run_id).data.params
    assert params["training.optuna_storage"] == "postgresql://u:***@db:5432/optuna"
    assert params["training.n_trials"] == str(settings.training.n_trials)
    assert not [key for key, value in params.items() if "s3cret" in value]
