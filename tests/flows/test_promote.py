"""Promotion against a real SQLite MLflow registry and a real Prefect server."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from pydantic import SecretStr

from adapters import decisions, keys, prediction_log, registry
from adapters.prefect_api import decision_lock, prefect_api_at
from cli.main import main as reggaeton
from cli.progress import RunProgress
from flows import gate, promote
from flows.outcome import decision_lines
from reggaeton import decision_record, names
from reggaeton.data import Split, features_array, split, synthetic_dataset
from reggaeton.model import LOGISTIC_REGRESSION, build_pipeline
from reggaeton.promotion import PROMOTED, REJECTED
from reggaeton.schema import FEATURE_NAMES, PREDICTION, PROBABILITY, SOURCE, TARGET, TRAFFIC
from reggaeton.settings import MLflowSettings, PromotionSettings, Settings

# Logistic regression: the one family the registry's skops trust list loads today.
GOOD = {"C": 1.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module (creating one costs seconds); each test has its own model name."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def gate_settings(store: Path, request: pytest.FixtureRequest) -> Settings:
    # A linear model on the small synthetic sample reaches PR-AUC ~0.2: floors set below it. The slices
    # are judged on a small fresh sample with few rounds: the gate's flow is under test here.
    policy = PromotionSettings(
        bootstrap_rounds=200, slice_bootstrap_rounds=200, fresh_rows=2000, min_pr_auc=0.1
    )
    model_name = f"reggaeton-{request.node.name.removeprefix('test_')[:60]}"
    return Settings(state_dir=store, promotion=policy, mlflow=MLflowSettings(model_name=model_name))


@pytest.fixture(scope="module")
def data() -> Split:
    return split(synthetic_dataset(2000, seed=3), 0.4, seed=3)


def _register(settings: Settings, data: Split, pipeline: Any, shuffle_labels: bool = False) -> str:
    """Fit, log with its reference set and register a version, like the training flow does."""
    client = registry.connect(settings)
    y = data.train[TARGET].to_numpy()
    if shuffle_labels:  # a valid model that learned nothing
        y = np.random.default_rng(0).permutation(y)
    pipeline.fit(features_array(data.train), y)
    proba = pipeline.predict_proba(features_array(data.holdout))[:, 1]
    experiment_id = registry.ensure_experiment(client, names.EXPERIMENT_TRAINING, settings)
    with mlflow.start_run(experiment_id=experiment_id):
        info = registry.log_model(pipeline, data.holdout, threshold=0.5)
        registry.log_reference(registry.reference_frame(data.holdout, proba, 0.5))
    model_name = settings.mlflow.model_name
    version = registry.register(client, info, model_name, {names.Tag.THRESHOLD: 0.5})
    client.set_registered_model_alias(model_name, names.CHALLENGER, version.version)
    return str(version.version)


def _good(settings: Settings, data: Split, seed: int = 0) -> str:
    return _register(settings, data, build_pipeline(LOGISTIC_REGRESSION, GOOD, seed=seed))


def _useless(settings: Settings, data: Split) -> str:
    return _register(settings, data, build_pipeline(LOGISTIC_REGRESSION, GOOD, seed=0), shuffle_labels=True)


def _corrupt(settings: Settings, version: str) -> None:
    """Overwrite a registered version's serialized model with garbage (a damaged artifact store)."""
    client = registry.connect(settings)
    location = client.get_model_version_download_uri(settings.mlflow.model_name, version)
    files = list(Path(urlparse(location).path).rglob("*.skops"))
    assert files, f"no serialized model under {location}"
    for path in files:
        path.write_bytes(b"not a model")


def _champion(settings: Settings) -> str | None:
    version = registry.get_alias(registry.connect(settings), settings.mlflow.model_name, names.CHAMPION)
    return None if version is None else str(version.version)


def _tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(registry.connect(settings).get_model_version(settings.mlflow.model_name, version).tags)


def _record(settings: Settings, version: str) -> decision_record.DecisionRecord:
    """A version's decision record, verified with the state folder's public key (as the API does)."""
    tags = _tags(settings, version)
    trusted = keys.verify_keys(settings)
    return trusted.verify(tags[names.Tag.DECISION_RECORD], tags[names.Tag.DECISION_SIGNATURE])


def _events(settings: Settings, name: str, version: str, expected: int = 1) -> list[Any]:
    """Events of one name about one version, waiting (bounded) for the server to store them."""
    EventsWorker.drain_all()
    resource = f"{names.Event.RESOURCE_PREFIX}.{settings.mlflow.model_name}"
    flt = EventFilter(
        occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(hours=1)),
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[resource]),
    )
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            found = [
                e
                for e in client.read_events(filter=flt, limit=50).events
                if e.resource.get("reggaeton.model.version") == version
            ]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _logged_outcome(settings: Settings, state: Any) -> list[str]:
    """The outcome lines a finished flow run logged (what `reggaeton` shows after a run on a worker)."""
    progress = RunProgress(io.StringIO())
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        api_url = str(client.api_url)
    on_server = settings.model_copy(
        update={"prefect": settings.prefect.model_copy(update={"api_url": api_url})}
    )
    progress.drain(on_server, run, outcome=True)
    return progress.outcome


def _gate(version: str, settings: Settings) -> tuple[dict[str, Any], list[Any], Any]:
    """Run the gate flow: its result, the promotion artifacts of that very flow run (the Prefect server
    is shared with other modules' gates, whose versions have the same numbers), and its final state."""
    state = promote.promotion_gate(version, settings, return_state=True)
    result: dict[str, Any] = state.result()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[names.PROMOTION_ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    return result, artifacts, state


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api_url")
def test_first_gate_makes_a_champion_and_a_rerun_changes_nothing(
    gate_settings: Settings, data: Split
) -> None:
    version = _good(gate_settings, data)

    first, artifacts, _ = _gate(version, gate_settings)

    assert first["outcome"] == PROMOTED and first["changed"]
    assert first["reason"].startswith("no champion yet")
    assert _champion(gate_settings) == version
    tags = _tags(gate_settings, version)
    assert tags[names.Tag.DECISION] == PROMOTED
    assert tags[names.Tag.DECISION_AGAINST] == "none"
    detail = json.loads(tags[names.Tag.DECISION_DETAIL])
    assert detail["challenger_metrics"]["pr_auc"] >= gate_settings.promotion.min_pr_auc
    # The signed record: this version, promoted by the gate, the first decision, over the detail shown.
    record = _record(gate_settings, version)
    assert (record.model, record.version, record.action, record.outcome) == (
        gate_settings.mlflow.model_name,
        version,
        decision_record.GATE,
        PROMOTED,
    )
    assert record.sequence == 1 and record.previous_champion is None
    assert record.evaluation == tags[names.Tag.DECISION_DATA]
    assert record.evidence.digest == decision_record.evidence_digest(detail)
    # As JSON holds it (the declared slices are a tuple in the settings, a list in the record).
    assert record.policy == json.loads(json.dumps(gate_settings.promotion.model_dump(mode="json")))
    assert len(_events(gate_settings, names.Event.PROMOTED, version)) == 1
    assert len(artifacts) == 1
    assert "| PR-AUC |" in artifacts[0].data and f"version {version}" in artifacts[0].data

    second, artifacts, _ = _gate(version, gate_settings)

    assert second["outcome"] == promote.UNCHANGED and not second["changed"]
    assert _tags(gate_settings, version) == tags
    assert artifacts == []  # an unchanged decision publishes nothing
    assert len(_events(gate_settings, names.Event.PROMOTED, version, expected=2)) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api_url")
def test_identical_challenger_is_rejected_and_the_alias_stays(gate_settings: Settings, data: Split) -> None:
    champion = _good(gate_settings, data)
    promote.promotion_gate(champion, gate_settings)
    twin = _good(gate_settings, data)

    outcome, artifacts, gated = _gate(twin, gate_settings)

    assert outcome["outcome"] == REJECTED
    assert outcome["reason"].startswith("not better beyond noise")
    assert _champion(gate_settings) == champion
    assert _tags(gate_settings, twin)[names.Tag.DECISION] == REJECTED
    assert _tags(gate_settings, twin)[names.Tag.DECISION_AGAINST] == champion
    # A rejection is signed and numbered too, and authorizes nothing.
    rejection = _record(gate_settings, twin)
    assert (
        rejection.outcome == REJECTED and rejection.sequence == _record(gate_settings, champion).sequence + 1
    )
    assert not rejection.promotes
    assert _tags(gate_settings, champion)[names.Tag.DECISION] == decisions.RETAINED
    events = _events(gate_settings, names.Event.REJECTED, twin)
    assert len(events) == 1 and events[0].payload["champion_version"] == champion
    # Every declared slice is judged and shown: the outcome, the event, the artifact with its plot, the
    # version's description, and the decision's files on the challenger's training run.
    slice_names = [spec.name for spec in gate_settings.promotion.slices]
    assert [s["name"] for s in outcome["slices"]] == slice_names
    assert [s["name"] for s in events[0].payload["slices"]] == slice_names
    base = next(s for s in outcome["slices"] if s["name"] == "base-data")
    assert base["positives"] >= base["min_positives"] and base["pr_auc_difference"] is not None
    [artifact] = artifacts
    assert f"challenger (version {twin})" in artifact.data
    assert "## Slices" in artifact.data and "| base-data | source == 'base' |" in artifact.data
    assert "data:image/png;base64," in artifact.data
    client = registry.connect(gate_settings)
    described = client.get_model_version(gate_settings.mlflow.model_name, twin).description
    assert described.startswith("rejected (") and "### Slices" in described
    run_id = client.get_model_version(gate_settings.mlflow.model_name, twin).run_id
    files = {a.path for a in client.list_artifacts(run_id, promote.GATE_ARTIFACTS)}
    assert files == {
        f"gate/{name}-vs-{champion}.{ext}"
        for name, ext in (("decision", "md"), ("decision", "json"), ("slices", "png"))
    }

    # What `reggaeton gate` prints, logged by the run for a command that waits on it from elsewhere.
    assert _logged_outcome(gate_settings, gated) == decision_lines(outcome)
    assert any(line.strip().startswith("base-data") for line in decision_lines(outcome))

    tags = _tags(gate_settings, twin)
    again = promote.promotion_gate(twin, gate_settings)
    assert again["outcome"] == promote.UNCHANGED and _tags(gate_settings, twin) == tags
    assert len(_events(gate_settings, names.Event.REJECTED, twin, expected=2)) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api_url")
def test_better_challenger_replaces_the_champion_and_rollback_restores_it(
    gate_settings: Settings, data: Split
) -> None:
    weak = _useless(gate_settings, data)
    # Below the floors for the gate, so an operator installs it.
    assert promote.promotion_gate(weak, gate_settings)["outcome"] == REJECTED
    assert _champion(gate_settings) is None
    manual = promote.promote_version(weak, "bootstrap the registry", by="alice", settings=gate_settings)
    assert manual["outcome"] == PROMOTED and _champion(gate_settings) == weak
    # The override of the gate's rejection is recorded with the promotion.
    assert manual["reason"].startswith(
        "manual promotion: bootstrap the registry; overrides the gate's rejection ("
    )
    assert _tags(gate_settings, weak)[names.Tag.DECIDED_BY] == "alice"

    strong = _good(gate_settings, data)
    outcome = promote.promotion_gate(strong, gate_settings)

    assert outcome["outcome"] == PROMOTED and outcome["reason"].startswith("better beyond noise")
    assert _champion(gate_settings) == strong
    assert _tags(gate_settings, strong)[names.Tag.PREVIOUS_CHAMPION] == weak
    client = registry.connect(gate_settings)
    previous = client.get_model_version_by_alias(gate_settings.mlflow.model_name, names.PREVIOUS_CHAMPION)
    assert str(previous.version) == weak
    assert _tags(gate_settings, weak)[names.Tag.DECISION] == decisions.REPLACED

    rolled = promote.rollback("precision dropped", by="bob", settings=gate_settings, return_state=True)
    back = rolled.result()

    assert back["version"] == weak and _champion(gate_settings) == weak
    assert _logged_outcome(gate_settings, rolled) == [
        f"rollback: version {weak} promoted (rollback: precision dropped)",
        f"champion: version {weak}",
    ]
    strong_tags, weak_tags = _tags(gate_settings, strong), _tags(gate_settings, weak)
    assert strong_tags[names.Tag.DECISION] == decisions.ROLLED_BACK
    assert (
        strong_tags[names.Tag.DECIDED_BY] == "bob"
        and "precision dropped" in strong_tags[names.Tag.DECISION_REASON]
    )
    assert weak_tags[names.Tag.DECISION] == decisions.RESTORED
    assert registry.get_alias(client, gate_settings.mlflow.model_name, names.PREVIOUS_CHAMPION) is None
    # The gate does not undo an operator's rollback.
    assert promote.promotion_gate(strong, gate_settings)["outcome"] == promote.UNCHANGED
    assert _champion(gate_settings) == weak
    with pytest.raises(promote.PromotionError, match="no previous champion"):
        promote.rollback("again", by="bob", settings=gate_settings)

    # Every decision took the next number; the rollback's record supersedes the strong one's, so an API
    # that served the strong version accepts the rollback and would refuse the weak version's old record.
    weak_record, strong_record = _record(gate_settings, weak), _record(gate_settings, strong)
    assert (weak_record.action, weak_record.previous_champion) == (decision_record.ROLLBACK, strong)
    assert weak_record.decided_by == "bob" and weak_record.sequence > strong_record.sequence
    trusted = keys.verify_keys(gate_settings)
    name = gate_settings.mlflow.model_name
    assert decision_record.authorize_champion(
        weak_tags[names.Tag.DECISION_RECORD],
        weak_tags[names.Tag.DECISION_SIGNATURE],
        trusted,
        model=name,
        version=weak,
        served_sequence=strong_record.sequence,
    )

    promoted = _events(gate_settings, names.Event.PROMOTED, weak, expected=2)
    assert {e.payload["action"] for e in promoted} == {promote.MANUAL, promote.ROLLBACK}
    assert {e.payload["decided_by"] for e in promoted} == {"alice", "bob"}
    assert len(_events(gate_settings, names.Event.PROMOTED, strong)) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api_url")
def test_broken_challenger_is_rejected_and_cannot_be_forced(gate_settings: Settings, data: Split) -> None:
    champion = _good(gate_settings, data)
    promote.promotion_gate(champion, gate_settings)
    broken = _good(gate_settings, data)
    _corrupt(gate_settings, broken)

    outcome = promote.promotion_gate(broken, gate_settings)

    assert outcome["outcome"] == REJECTED
    assert outcome["reason"].startswith("invalid challenger: failed to load")
    assert _champion(gate_settings) == champion
    with pytest.raises(promote.PromotionError, match="refusing to promote"):
        promote.promote_version(broken, "try anyway", by="carol", settings=gate_settings)
    assert _champion(gate_settings) == champion

    # A version the server would refuse (no decision threshold) is refused by the gate with serving's reason.
    untagged = _good(gate_settings, data, seed=3)
    client = registry.connect(gate_settings)
    client.delete_model_version_tag(gate_settings.mlflow.model_name, untagged, names.Tag.THRESHOLD)
    outcome = promote.promotion_gate(untagged, gate_settings)
    assert outcome["outcome"] == REJECTED
    assert f"no usable {names.Tag.THRESHOLD} tag" in outcome["reason"]
    assert _champion(gate_settings) == champion


def test_evaluation_adds_labelled_traffic_the_challenger_has_not_seen(
    settings: Settings, data: Split
) -> None:
    gate_settings = settings  # its own prediction log
    version = _good(gate_settings, data)
    client = registry.connect(gate_settings)
    challenger = client.get_model_version(names.MODEL_NAME, version)
    trained_at = datetime.fromtimestamp(client.get_run(str(challenger.run_id)).info.start_time / 1000, UTC)
    engine = prediction_log.make_engine(gate_settings.prediction_log_url)
    prediction_log.create_tables(engine)
    rows = synthetic_dataset(40, seed=11).frame.head(6)  # songs the version never saw
    predicted = [trained_at - timedelta(hours=1)] * 2 + [trained_at + timedelta(hours=1)] * 4
    with engine.begin() as connection:
        for (_, row), when in zip(rows.iterrows(), predicted, strict=True):
            pid = str(uuid.uuid4())
            features = {name: float(row[name]) for name in FEATURE_NAMES}
            connection.execute(
                prediction_log.predictions.insert().values(
                    id=pid,
                    created_at=when,
                    model_name=names.MODEL_NAME,
                    model_version=version,
                    **features,
                    **{PROBABILITY: 0.5, PREDICTION: 1},
                )
            )
            connection.execute(
                prediction_log.feedback.insert().values(
                    prediction_id=pid, label=int(row[TARGET]), received_at=when + timedelta(minutes=5)
                )
            )
    engine.dispose()

    traffic = prediction_log.labelled_traffic(prediction_log.make_engine(gate_settings.prediction_log_url))
    assert len(traffic) == 6 and list(traffic[TARGET]) == list(rows[TARGET])

    frame = gate.load_evaluation(gate_settings, client, challenger, None)

    assert (frame[gate.ORIGIN] == gate.HOLDOUT).sum() == len(data.holdout)
    assert (frame[SOURCE] == TRAFFIC).sum() == 4
    assert (frame[gate.ORIGIN] == gate.TRAFFIC).sum() == 4  # predicted after the challenger was trained
    no_feedback_training = gate_settings.model_copy(
        update={"data": gate_settings.data.model_copy(update={"include_feedback": False})}
    )
    assert (
        gate.load_evaluation(no_feedback_training, client, challenger, None)[gate.ORIGIN] == "traffic"
    ).sum() == 6


def test_labelled_traffic_is_empty_without_a_log(settings: Settings) -> None:
    settings.ensure_state_dir()
    traffic = prediction_log.labelled_traffic(prediction_log.make_engine(settings.prediction_log_url))
    assert traffic.empty and [*FEATURE_NAMES, TARGET] == [
        c for c in traffic.columns if c in (*FEATURE_NAMES, TARGET)
    ]
    assert isinstance(traffic, pd.DataFrame)


@pytest.mark.slow
def test_operator_commands_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Split, prefect_api_url: str
) -> None:
    monkeypatch.setenv("REGGAETON_STATE_DIR", str(tmp_path / "state"))
    settings = Settings()
    version = _good(settings, data)

    # The SQLite store named by the project's setting (no server to check); Prefect from the harness.
    monkeypatch.setenv("REGGAETON_MLFLOW__TRACKING_URI", settings.tracking_uri)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    assert reggaeton(["rollback", "--reason", "nothing to roll back yet"]) == 1
    assert reggaeton(["promote", "--version", "99", "--reason", "no such version"]) == 1
    assert reggaeton(["promote", "--version", version, "--reason", "first model", "--by", "dana"]) == 0

    assert _champion(settings) == version
    tags = _tags(settings, version)
    assert (
        tags[names.Tag.DECIDED_BY] == "dana"
        and tags[names.Tag.DECISION_REASON] == "manual promotion: first model"
    )


def _move_by_hand(settings: Settings, version: str) -> None:
    """What the gate cannot prevent: anyone with write access to the registry points the alias."""
    registry.connect(settings).set_registered_model_alias(settings.mlflow.model_name, names.CHAMPION, version)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api_url")
def test_an_alias_moved_by_hand_is_neither_gated_against_nor_kept_by_a_rollback(
    gate_settings: Settings, data: Split
) -> None:
    decided = _good(gate_settings, data)
    promote.promotion_gate(decided, gate_settings)
    undecided = _good(gate_settings, data, seed=1)
    _move_by_hand(gate_settings, undecided)

    # The gate refuses to compare with a champion no decision made, naming both ways out.
    challenger = _good(gate_settings, data, seed=2)
    with pytest.raises(
        promote.PromotionError, match=f"points at version {undecided}, which no signed decision"
    ):
        promote.promotion_gate(challenger, gate_settings)
    assert names.Tag.DECISION_RECORD not in _tags(gate_settings, challenger)

    # A rollback goes back to the last decided champion, signed with a newer number.
    back = promote.rollback("moved by hand", by="erin", settings=gate_settings)
    assert back["version"] == decided and _champion(gate_settings) == decided
    restored = _record(gate_settings, decided)
    assert restored.action == decision_record.ROLLBACK and restored.previous_champion == undecided
    assert restored.sequence == 2

    # The operator may accept a hand-moved version instead: `promote` signs it even though the alias is there.
    _move_by_hand(gate_settings, undecided)
    accepted = promote.promote_version(undecided, "accept the hotfix", by="erin", settings=gate_settings)
    assert accepted["outcome"] == PROMOTED and accepted["changed"]
    record = _record(gate_settings, undecided)
    assert (record.action, record.sequence, record.previous_champion) == (
        decision_record.MANUAL,
        3,
        undecided,
    )
    # Its rollback target is the decided champion, not the hand-moved alias.
    assert _tags(gate_settings, undecided)[names.Tag.PREVIOUS_CHAMPION] == decided
    again = promote.promote_version(undecided, "twice", by="erin", settings=gate_settings)
    assert again["outcome"] == promote.UNCHANGED


@pytest.mark.slow
def test_two_deciders_at_once_never_take_the_same_sequence(
    gate_settings: Settings, data: Split, prefect_api_url: str
) -> None:
    versions = [_good(gate_settings, data, seed=seed) for seed in (4, 5)]
    client = registry.connect(gate_settings)
    key = keys.signing_key(gate_settings)
    name = gate_settings.mlflow.model_name
    taken: list[int] = []
    errors: list[BaseException] = []

    def decide(version: str) -> None:
        try:
            with prefect_api_at(prefect_api_url), decision_lock(wait_s=60):
                # Read, then take time before writing: without the lock both would read the same number.
                numbered = decisions.next_sequence(client, name)
                time.sleep(1.0)
                record = decisions.sign_decision(
                    client,
                    key,
                    model=name,
                    version=version,
                    action=decision_record.MANUAL,
                    outcome=PROMOTED,
                    previous_champion=None,
                    evaluation=None,
                    evidence=decision_record.evidence_of({}, "concurrency test"),
                    policy={},
                    decided_by="test",
                    decided_at=decisions.now(),
                )
                assert record.sequence == numbered
                taken.append(record.sequence)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(version,)) for version in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(taken) == [1, 2]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api_url")
def test_promoting_the_champion_signs_it_again_with_a_new_key(gate_settings: Settings, data: Split) -> None:
    """A key rotation: with the new private key and both public keys, promoting the champion re-signs it."""
    champion = _good(gate_settings, data)
    promote.promotion_gate(champion, gate_settings)
    old = keys.signing_key(gate_settings)
    new = decision_record.generate()
    rotated = gate_settings.model_copy(
        update={
            "signing": gate_settings.signing.model_copy(
                update={
                    "private_key": SecretStr(new.private_text()),
                    "public_keys": f"{old.public_text()},{new.public_text()}",
                }
            )
        }
    )
    again = promote.promote_version(champion, "key rotation", by="ops", settings=rotated)
    assert again["outcome"] == PROMOTED and again["changed"]
    tags = _tags(gate_settings, champion)
    assert tags[names.Tag.DECISION_SIGNATURE].startswith(f"{new.key_id}:")
    record = decision_record.VerifyKeys.of([new.public]).verify(
        tags[names.Tag.DECISION_RECORD], tags[names.Tag.DECISION_SIGNATURE]
    )
    assert (record.action, record.sequence) == (decision_record.MANUAL, 2)
    # Signed by this key already: nothing to do.
    assert (
        promote.promote_version(champion, "twice", by="ops", settings=rotated)["outcome"] == promote.UNCHANGED
    )
