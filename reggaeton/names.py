"""Names that are contracts between the parts of the system: registry, aliases, tags, events."""

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

MODEL_NAME: Final = "reggaeton-classifier"
CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
PREVIOUS_CHAMPION: Final = "previous-champion"  # alias kept by promotion, used by rollback

# The accounts of MLflow's basic-auth app in the container stacks (the user name is the account's):
# one per service, each with the least permissions MLflow can express (infra/accounts.py grants them).
TRAINING_ACCOUNT: Final = "training"
PROMOTION_ACCOUNT: Final = "promotion"
MONITORING_ACCOUNT: Final = "monitoring"
SERVING_ACCOUNT: Final = "serving"
MLFLOW_ACCOUNTS: Final = (TRAINING_ACCOUNT, PROMOTION_ACCOUNT, MONITORING_ACCOUNT, SERVING_ACCOUNT)
MLFLOW_ADMIN: Final = "admin"

EXPERIMENT_TRAINING: Final = "reggaeton-training"
EXPERIMENT_MONITORING: Final = "reggaeton-monitoring"
# One MLflow run per batch scoring of a catalogue (`reggaeton score`, the score-catalogue deployment).
EXPERIMENT_BATCH: Final = "reggaeton-batch-scoring"

# The watchdog's liveness file in its state folder (``reggaeton.heartbeat``): its container's healthcheck
# reads it.
WATCHDOG_ALIVE_FILE: Final = "watchdog.alive"

# The prefect.yaml deployment that trains a challenger and gates it (retrain trigger, bootstrap, demo).
TRAIN_DEPLOYMENT: Final = "train-and-promote"
# The prefect.yaml deployment that monitors the champion on a schedule.
MONITOR_DEPLOYMENT: Final = "monitor"
# The prefect.yaml deployment (and its flow) that archives old prediction-log rows, on a schedule.
RETENTION_DEPLOYMENT: Final = "retention"
RETENTION_FLOW: Final = "retention"
# The prefect.yaml deployment (and its flow) that judges a challenger on live traffic (policy shadow or
# canary), on a schedule: promotes, rejects, moves the canary a step, or waits for more evidence.
LIVE_GATE_DEPLOYMENT: Final = "live-gate"
LIVE_GATE_FLOW: Final = "live-gate"
# The process work pool every worker polls (the settings' default; prefect.yaml and the container
# stack are checked against it by tests/test_contracts.py).
WORK_POOL: Final = "reggaeton-pool"
# The prefect.yaml deployments of the operator's commands, one per flow (of the same name), run on the
# stack's worker when the command line talks to a container stack (`reggaeton --stack compose gate|
# promote|rollback|train|shadow|canary`): there the flows read the stack's prediction log and sign with
# its key. No schedule, no trigger.
GATE_DEPLOYMENT: Final = "promotion-gate"
PROMOTE_DEPLOYMENT: Final = "promote-version"
ROLLBACK_DEPLOYMENT: Final = "rollback-champion"
TRAIN_ONLY_DEPLOYMENT: Final = "train"  # train and register a challenger, no gate (TRAIN_DEPLOYMENT gates)
SHADOW_START_DEPLOYMENT: Final = "shadow-start"  # reggaeton shadow --start N
LIVE_REPORT_DEPLOYMENT: Final = "live-report"  # reggaeton shadow: the live comparison so far
CANARY_START_DEPLOYMENT: Final = "canary-start"
CANARY_ABORT_DEPLOYMENT: Final = "canary-abort"
OPERATOR_DEPLOYMENTS: Final = (
    GATE_DEPLOYMENT,
    PROMOTE_DEPLOYMENT,
    ROLLBACK_DEPLOYMENT,
    TRAIN_ONLY_DEPLOYMENT,
    SHADOW_START_DEPLOYMENT,
    LIVE_REPORT_DEPLOYMENT,
    CANARY_START_DEPLOYMENT,
    CANARY_ABORT_DEPLOYMENT,
)
# The prefect.yaml deployment that runs a share of a retrain's Optuna study (``training.parallel_workers``).
TUNE_DEPLOYMENT: Final = "tune"
# Its flow's name (``run_deployment`` takes "<flow>/<deployment>").
TUNE_FLOW: Final = "tune-study"
# The prefect.yaml deployment (and its flow's name) that scores a whole catalogue in batch.
SCORE_DEPLOYMENT: Final = "score-catalogue"
# The work pool of the tuning runs: each worker container also runs a worker on it with `--limit 1`, so
# the runs of one retrain spread one per machine.
TUNING_POOL: Final = "reggaeton-tuning"
# Flow runs send a heartbeat this often (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set by both stacks); the
# zombie automation counts its silence in these beats.
FLOW_HEARTBEAT_S: Final = 30
# Workers ask their pool for runs this often (PREFECT_WORKER_QUERY_SECONDS, set by both stacks). Prefect's
# 10 s default was ~10 s of every triggered run's start (the demo's monitor, the drift retrain).
WORKER_POLL_S: Final = 2

# The environment every process of the system runs with: usage analytics off (without a network,
# NannyML's and Prefect's would wait on DNS). MLflow 3 reads DO_NOT_TRACK only when it is "true", so it
# gets its own switch. The images set the same (the Dockerfile, checked by tests/test_contracts.py).
TELEMETRY_OFF: Final[Mapping[str, str]] = MappingProxyType(
    {
        "NML_DISABLE_USAGE_LOGGING": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
)

# The environment of every MLflow server the stacks start: MLflow 3's server otherwise forks a job runner
# (about 7 polling processes of ~180 MB each, for GenAI features nothing here uses). docker-compose.yml
# and infra/services.py set the same (tests/infra/test_parity.py checks they agree).
MLFLOW_SERVER_ENV: Final[Mapping[str, str]] = MappingProxyType(
    {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
)

# Child of a flow run's logger (``get_run_logger().getChild``) for the lines a terminal shows live while
# it waits on the run (``reggaeton monitor``: one line per chunk window analysed).
PROGRESS_LOG: Final = "progress"
# Child of a flow run's logger for what an operator command prints when the run is done (the gate's
# decision, the new challenger): the command line shows these lines after a run on the stack's worker as
# it prints them after the same flow run in its own process.
OUTCOME_LOG: Final = "outcome"

# The response header naming the API replica (process) that answered: see the spread behind a balancer.
REPLICA_HEADER: Final = "x-reggaeton-replica"
# The request header a client may send to be routed the same way every time during a canary (sticky: a
# client is answered by the champion or by the canary, not by both in turn). Without it, per request.
CLIENT_HEADER: Final = "x-reggaeton-client"
# The response header naming which of the stack's own servers answered (the local alert receiver), so
# `reggaeton up` can tell its service from another program on the same port.
SERVICE_HEADER: Final = "x-reggaeton-service"

# Artifact paths inside a training run.
REFERENCE_ARTIFACT: Final = "reference/reference.parquet"
MODEL_ARTIFACT_NAME: Final = "model"
# The Prefect global concurrency limit (one slot) every decider holds while it numbers and writes a
# decision record: two deciders never take the same sequence number.
DECISION_LOCK: Final = "reggaeton-decisions"
# Prefect artifact key of the promotion decision table (lowercase letters, digits and dashes).
PROMOTION_ARTIFACT_KEY: Final = "reggaeton-promotion"
# Prefect artifact keys of a batch scoring run: its progress bar and its summary table.
SCORE_PROGRESS_ARTIFACT_KEY: Final = "reggaeton-score-progress"
SCORE_ARTIFACT_KEY: Final = "reggaeton-score"
# Prefect artifact key of the live gate's comparison (champion vs challenger on live rows).
LIVE_ARTIFACT_KEY: Final = "reggaeton-live-gate"


class Tag:
    """Tag keys set on registered model versions and runs.

    A version carries only what code reads or searches by: the flow run that made it, its retrain
    request (searched to resume a crashed run), its data hash (shown by ``status``), its threshold (the
    server serves with it) and the decision tags (the gate, rollback and ``status`` read them). Its
    metrics are on its logged model, its family and data source are the logged model's parameters.
    """

    FLOW_RUN_ID: Final = "reggaeton.flow_run_id"
    # The retrain request a run or version serves: its first flow run's id, shared by the reruns of
    # that run after a crash, so a rerun finds what an earlier attempt already registered.
    RETRAIN_REQUEST: Final = "reggaeton.retrain_request"
    DATA_HASH: Final = "reggaeton.data_hash"
    DATA_SOURCE: Final = "reggaeton.data_source"
    THRESHOLD: Final = "reggaeton.threshold"
    # Read only: versions registered before their metrics moved to the logged model carry them as tags.
    LEGACY_METRIC_PREFIX: Final = "reggaeton.metric."
    DECISION: Final = "reggaeton.decision"
    DECISION_REASON: Final = "reggaeton.decision_reason"
    DECIDED_BY: Final = "reggaeton.decided_by"
    DECIDED_AT: Final = "reggaeton.decided_at"
    PREVIOUS_CHAMPION: Final = "reggaeton.previous_champion"
    DECISION_AGAINST: Final = "reggaeton.decision_against"  # champion version the gate compared with
    DECISION_DATA: Final = "reggaeton.decision_data"  # content hash of the gate's evaluation data
    DECISION_DETAIL: Final = "reggaeton.decision_detail"  # the decision's numbers as JSON
    # Monitoring's state of the version (ok | degraded) and since when it is degraded, set by the monitor
    # (its results store holds the state; this copy is what the API's /metrics and the MLflow UI show).
    MONITORING_STATUS: Final = "reggaeton.monitoring_status"
    MONITORING_SINCE: Final = "reggaeton.monitoring_since"
    # The signed decision record (reggaeton/decision_record.py): its canonical JSON and its signature, on
    # the version it decides about. The API serves a champion only when these verify.
    DECISION_RECORD: Final = "reggaeton.decision_record"
    DECISION_SIGNATURE: Final = "reggaeton.decision_signature"
    # On the registered model: the last decision sequence handed out (the next decision takes one more).
    DECISION_SEQUENCE: Final = "reggaeton.decision_sequence"
    WORKER: Final = "reggaeton.worker"  # on a trial's nested run: the worker (host) that ran it
    # A version's place in the live evaluation (reggaeton.live: registered, shadow, canary, champion,
    # rejected), when its live evaluation began (evidence counts from then), and when its canary step
    # began (ISO 8601, UTC). The deciders' bookkeeping: replicas follow the signed records, not these.
    LIVE_STATE: Final = "reggaeton.live_state"
    LIVE_SINCE: Final = "reggaeton.live_since"
    CANARY_SINCE: Final = "reggaeton.canary_since"
    CANARY_SHARE: Final = "reggaeton.canary_share"
    CANARY_STEP: Final = "reggaeton.canary_step"  # index into LiveSettings.canary_steps
    CANARY_HELD: Final = "reggaeton.canary_held"  # "true": an operator aborted its canary (no automatic one)


class Event:
    """Prefect event names (the contract between emitters and automations)."""

    DEGRADED: Final = "reggaeton.model.degraded"
    # The champion is still degraded, but its retrain was requested within the debounce window (the
    # payload says when the next is allowed): notifies, never retrains.
    RETRAIN_SUPPRESSED: Final = "reggaeton.model.retrain_suppressed"
    DRIFTED: Final = "reggaeton.data.drifted"
    PROMOTED: Final = "reggaeton.model.promoted"
    REJECTED: Final = "reggaeton.model.rejected"
    RELOAD_FAILED: Final = "reggaeton.model.reload_failed"
    # Live evaluation (policy shadow or canary): a challenger began shadowing; a canary moved a step
    # (its share of requests in the payload); a canary was aborted (why, in the payload). And from an
    # API replica: the challenger failed (raised, hung, or answered nonsense) as a shadow or as a canary
    # (the champion answered instead), one event per episode (until it answers well again).
    SHADOW_STARTED: Final = "reggaeton.model.shadow_started"
    CANARY_STEP: Final = "reggaeton.model.canary_step"
    CANARY_ABORTED: Final = "reggaeton.model.canary_aborted"
    CHALLENGER_FAILING: Final = "reggaeton.serving.challenger_failing"
    # The champion alias points at a version no signed decision made champion (moved by hand, or a
    # record that does not verify): the API keeps serving the current champion.
    UNAUTHORIZED_CHAMPION: Final = "reggaeton.model.unauthorized_champion"
    # The prediction log's database cannot be written (rows wait in the spool) / is written again.
    LOG_UNAVAILABLE: Final = "reggaeton.serving.log_unavailable"
    LOG_RECOVERED: Final = "reggaeton.serving.log_recovered"
    # The watchdog (monitoring/watchdog.py): silence of a scheduled deployment becomes an event, and so does
    # its end; runs cancelled by a deployment concurrency limit are counted and reported.
    MONITOR_STALE: Final = "reggaeton.monitor.stale"
    MONITOR_RECOVERED: Final = "reggaeton.monitor.recovered"
    RETRAIN_STALE: Final = "reggaeton.retrain.stale"
    RETRAIN_RECOVERED: Final = "reggaeton.retrain.recovered"
    RUNS_CANCELLED: Final = "reggaeton.runs.cancelled"
    # Resource id prefix of the watchdog's events: "<prefix>.<deployment name>".
    DEPLOYMENT_RESOURCE_PREFIX: Final = "reggaeton.deployment"
    # Resource id prefix used on every event: "<prefix>.<model name>".
    RESOURCE_PREFIX: Final = "reggaeton.model"
    # The resource label holding the model version (automations debounce per version on it).
    VERSION_LABEL: Final = "reggaeton.model.version"
