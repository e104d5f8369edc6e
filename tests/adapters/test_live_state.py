"""The live-state tags on a registered version: written, cleared and read back."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from adapters import live_state
from reggaeton import live, names


def test_a_canary_ends_with_its_tags_cleared_by_tag_writes_alone(tmp_path: Path) -> None:
    """Leaving a canary clears its tags with writes, never deletes: the container stacks' promotion
    account may set a version's tags (MLflow's EDIT) but not delete them (MANAGE)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model = names.MODEL_NAME
    client.create_registered_model(model)
    version = str(client.create_model_version(model, str(tmp_path), run_id=None).version)

    def refuse(*_: object) -> None:
        raise AssertionError("a live-state tag was deleted")

    client.delete_model_version_tag = refuse  # type: ignore[method-assign,assignment]
    live_state.begin(client, model, version, live_state.now())
    live_state.canary(client, model, version, step=1, share=0.25)
    during = live_state.read(client.get_model_version(model, version))
    assert (during.state, during.canary_step, during.canary_share) == (live.CANARY, 1, 0.25)
    assert during.canary_since is not None

    live_state.canary(client, model, version, step=None, share=0.0)  # an abort: back to shadow only
    after = live_state.read(client.get_model_version(model, version))
    assert (after.state, after.canary_step, after.canary_share, after.canary_since) == (
        live.SHADOW,
        None,
        0.0,
        None,
    )
    live_state.set_tags(client, model, version, {names.Tag.CANARY_HELD: "true"})
    live_state.set_tags(client, model, version, {names.Tag.CANARY_HELD: None})
    assert not live_state.read(client.get_model_version(model, version)).canary_held

    live_state.canary(client, model, version, step=0, share=0.05)
    live_state.end(client, model, version, live.REJECTED)
    ended = live_state.read(client.get_model_version(model, version))
    assert (ended.state, ended.canary_share) == (live.REJECTED, 0.0)
