"""One frozen settings object. Defaults are the embedded local stack; production comes from the environment.

Environment variables use the prefix ``REGGAETON_`` and ``__`` between a section and its field,
e.g. ``REGGAETON_MLFLOW__TRACKING_URI`` or ``REGGAETON_SERVING__PORT``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reggaeton import names, slices

LOCAL_PLACEHOLDER_SECRET = "local-dev-only"
# Values anyone can read in this repository (the default above, .env.example's): refused outside local mode.
EXAMPLE_SECRETS = frozenset({LOCAL_PLACEHOLDER_SECRET, "change-me"})


# libpq settings for every Postgres connection the system opens (the prediction log's engines, Optuna's
# storage). A server that is gone without closing its connections (a crash whose resets were lost, a
# network split) would otherwise hold a write, or a pool's pre-ping, for TCP's ~15 minutes of
# retransmissions: here a connect fails after 5 s, unacknowledged data after 10 s, and an idle pooled
# connection to a dead server is found by keepalive probes.
POSTGRES_CONNECT_ARGS: Final[dict[str, int]] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # milliseconds
}

# The same bounds for the server's end of each of those connections, set per session (libpq's
# ``options``), so they hold on any Postgres, whatever its configuration. A client cut off by a network
# split mid-transaction (after its INSERT, before its COMMIT) leaves a backend waiting for it with the
# rows' locks held; with the server's defaults (keepalive after 2 hours) that backend outlives the split,
# and the retry of the same rows (``ON CONFLICT`` on their ids) waits on its locks for as long. With
# these, the server finds the dead client within ~20 s, ends the backend and releases its locks.
POSTGRES_SESSION_SETTINGS: Final[dict[str, int]] = {
    "tcp_keepalives_idle": POSTGRES_CONNECT_ARGS["keepalives_idle"],
    "tcp_keepalives_interval": POSTGRES_CONNECT_ARGS["keepalives_interval"],
    "tcp_keepalives_count": POSTGRES_CONNECT_ARGS["keepalives_count"],
    "tcp_user_timeout": POSTGRES_CONNECT_ARGS["tcp_user_timeout"],  # milliseconds
}


# SQLAlchemy URL schemes whose driver is libpq (the default driver of postgresql:// is psycopg 3).
LIBPQ_SCHEMES: Final = frozenset({"postgresql", "postgresql+psycopg", "postgresql+psycopg2"})


def with_postgres_timeouts(url: str) -> str:
    """A Postgres URL with :data:`POSTGRES_CONNECT_ARGS` and :data:`POSTGRES_SESSION_SETTINGS` in its query.

    What the URL sets wins: its own arguments are kept, and its own ``options`` come after these
    settings' (Postgres applies the last ``-c`` of a name). For code that takes a URL, not an engine
    (Optuna's storage): SQLAlchemy passes the query to libpq. Other URLs (SQLite, drivers that are not
    libpq) are returned as they are.
    """
    parts = urlsplit(url)
    if parts.scheme not in LIBPQ_SCHEMES:
        return url
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    session = " ".join(f"-c {name}={value}" for name, value in POSTGRES_SESSION_SETTINGS.items())
    own_options = query.pop("options", "").strip()
    query = {
        **{key: str(value) for key, value in POSTGRES_CONNECT_ARGS.items()},
        **query,
        "options": f"{session} {own_options}".strip(),
    }
    return urlunsplit(parts._replace(query=urlencode(query)))


def without_password(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and recorded parameters."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _env_name(path: str) -> str:
    """The environment variable of a settings field, e.g. ``serving.admin_token``."""
    return "REGGAETON_" + path.upper().replace(".", "__")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _blank_is_none(value: object) -> object:
    """An empty value means unset: compose's ``${NAME:-}`` of a variable left out of ``.env``."""
    return None if isinstance(value, str) and not value.strip() else value


class MLflowSettings(_Section):
    """Tracking store and registry."""

    tracking_uri: str | None = None  # default: SQLite file in the state folder
    registry_uri: str | None = None  # default: the tracking URI
    artifact_root: str | None = None  # default: folder in the state folder
    model_name: str = names.MODEL_NAME
    training_experiment: str = names.EXPERIMENT_TRAINING
    monitoring_experiment: str = names.EXPERIMENT_MONITORING
    batch_experiment: str = names.EXPERIMENT_BATCH
    host: str = "127.0.0.1"
    port: int = 5000
    # Passwords of the MLflow basic-auth accounts (names.MLFLOW_ACCOUNTS) in the container stacks: a
    # process authenticates as the account of what it does (registry.connect). Unset: an open server
    # (the embedded stack), or MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD (the operator's).
    training_password: SecretStr | None = None
    promotion_password: SecretStr | None = None
    monitoring_password: SecretStr | None = None
    serving_password: SecretStr | None = None

    _optional_passwords = field_validator(
        "training_password", "promotion_password", "monitoring_password", "serving_password", mode="before"
    )(_blank_is_none)

    def account_password(self, account: str) -> SecretStr | None:
        """The password of one account of names.MLFLOW_ACCOUNTS (None: not configured here)."""
        password: SecretStr | None = getattr(self, f"{account}_password")
        return password


class DataSettings(_Section):
    """Where training data comes from."""

    folder: Path | None = None  # a folder in the original CSV layout; None = synthetic sample
    synthetic_rows: int = Field(default=2300, ge=100)
    seed: int = 42
    holdout_fraction: float = Field(default=0.25, gt=0.05, lt=0.6)
    include_feedback: bool = True  # add labelled production traffic to training data when present
    # A retrain keeps at least this share of its rows from the base data, so the traffic it adds does not
    # drown the songs that are still there: a synthetic base draws more songs from the same generator;
    # a folder's songs are all kept and the traffic is sampled down to fit (by row key). 0: no limit.
    min_base_share: float = Field(default=0.75, ge=0, lt=1)


class TrainingSettings(_Section):
    """Optuna tuning and model selection."""

    n_trials: int = Field(default=50, ge=1)
    timeout_s: float | None = None
    cv_folds: int = Field(default=5, ge=2)
    cv_repeats: int = Field(default=1, ge=1)
    # Parallel trials, each in a worker process above 1 (tuning.parallel_trials); None: one per core, and
    # at most one per tuning.TRIALS_PER_WORKER trials. One native thread per trial.
    n_jobs: int | None = Field(default=None, ge=1)
    pruning: bool = True  # stop poor trials after a CV fold (median pruner)
    warm_start: bool = True  # evaluate the champion's parameters and the baseline's equivalent first
    families: tuple[str, ...] = ("hist_gradient_boosting", "logistic_regression", "random_forest")
    optuna_storage: str | None = None  # default: SQLite file in the state folder
    study_name: str = "reggaeton"
    bootstrap_rounds: int = Field(default=1000, ge=100)
    seed: int = 42
    # Above 1, the study runs as this many runs of the tuning deployment on the tuning pool (at most
    # one per online tuning worker), sharing the study in optuna_storage; 1: in the training run.
    parallel_workers: int = Field(default=1, ge=1)
    # How long the training run waits for its tuning runs (queued, then running) before cancelling them.
    spread_timeout_s: float = Field(default=3600.0, gt=0)
    # Recorded on each trial (tuning.WORKER) and its MLflow run; default: the host name (a container's id).
    worker_name: str | None = None


class SliceSpec(_Section):
    """One slice the gate judges on its own: a name, a rule over rows, its power and its tolerance.

    ``where`` is a predicate over the columns of ``reggaeton.slices.SLICE_COLUMNS`` (the seven features,
    ``source``, ``origin``, ``champion_reference``), e.g. ``tempo >= 120 and source == 'traffic'``;
    ``window_days`` keeps the rows observed within that many days of the newest one.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=40)
    where: str = ""
    window_days: float | None = Field(default=None, gt=0)
    # Below this many positives (or without a negative) the slice is "too small to judge": reported,
    # never counted as held. PR-AUC's paired interval over ~20 positives is about +-0.1 wide.
    min_positives: int = Field(default=20, ge=1)
    allowed_regression: float = Field(default=0.02, ge=0, lt=1)  # PR-AUC the challenger may lose here
    description: str = ""

    @field_validator("where")
    @classmethod
    def _readable(cls, where: str) -> str:
        slices.parse_rule(where)  # RuleError is a ValueError: the settings error names the field
        return where

    @property
    def rule(self) -> str:
        """The rule in words."""
        return slices.rule_text(self.where, self.window_days)


# The slices judged by default (see docs/architecture.md, "Slices"): the base data (what a retrain must not
# forget), the champion's own held-out rows, recent labelled traffic, and three tempo/sound bands.
DEFAULT_SLICES: Final[tuple[SliceSpec, ...]] = (
    SliceSpec(
        name="base-data",
        where="source == 'base'",
        description="the base data (a folder's songs, or the synthetic sample: a fresh draw of it)",
    ),
    SliceSpec(
        name="champion-reference",
        where="champion_reference == 1",
        description="the champion's own held-out rows: what it was validated on",
    ),
    SliceSpec(
        name="recent-traffic",
        where="source == 'traffic'",
        window_days=7,
        description="labelled traffic of the last week: today's songs",
    ),
    SliceSpec(
        name="dembow-tempo",
        where="tempo >= 85 and tempo < 105",
        description="the dembow rhythm's tempo, where most reggaeton is",
    ),
    SliceSpec(
        name="fast-tempo",
        where="tempo >= 120",
        description="fast songs: dance-pop, electronic, and faster reggaeton",
    ),
    SliceSpec(
        name="acoustic",
        where="acousticness >= 0.4",
        description="acoustic songs: ballads, acoustic versions",
    ),
)


class PromotionSettings(_Section):
    """The champion/challenger gate."""

    min_gain: float = 0.0  # minimum PR-AUC gain (lower bound of the paired bootstrap interval)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    roc_auc_tolerance: float = 0.02
    brier_tolerance: float = 0.01
    latency_tolerance: float = 2.0  # challenger latency per row at most this times the champion's...
    # ...unless it stays within this absolute budget: sub-millisecond models differ by noise-sized ratios,
    # and one-row latencies on a loaded machine swing by 2-3x between two measurements.
    latency_budget_ms: float = Field(default=5.0, ge=0)
    min_pr_auc: float = 0.3  # absolute floors when there is no champion yet
    min_roc_auc: float = 0.7
    bootstrap_rounds: int = Field(default=1000, ge=100)
    seed: int = 7
    # Slices judged on their own (reggaeton.promotion): each must not be worse beyond noise by more
    # than its allowed regression. Environment: REGGAETON_PROMOTION__SLICES='[{"name": ..., ...}]'.
    slices: tuple[SliceSpec, ...] = DEFAULT_SLICES
    # "worse": a slice blocks when its interval lies below -allowed (shown worse; the error controlled is
    # a false block, Bonferroni over the judged slices). "within": a slice blocks unless its interval
    # lies above -allowed (shown within; the error controlled is a false pass, no adjustment needed).
    slice_rule: Literal["worse", "within"] = "worse"
    slice_bootstrap_rounds: int = Field(default=2000, ge=100)  # tails of 1 - 0.05/6 need rounds
    # With a synthetic base, the base data's slices are also scored on a fresh sample of this many songs
    # (never trained on), so they have the power a handful of held-out positives lack. 0: none.
    fresh_rows: int = Field(default=10_000, ge=0)

    @field_validator("slices")
    @classmethod
    def _unique_names(cls, specs: tuple[SliceSpec, ...]) -> tuple[SliceSpec, ...]:
        seen = [spec.name for spec in specs]
        twice = sorted({name for name in seen if seen.count(name) > 1})
        if twice:
            raise ValueError(f"slice names must be unique: {', '.join(twice)}")
        return specs


Policy = Literal["offline", "shadow", "canary"]


class LiveSettings(_Section):
    """Live evidence (``reggaeton.live``): the promotion policy, the live gate, the shadow and the canary.

    ``policy``: ``offline`` promotes on the offline gate alone, as soon as a retrain ends; ``shadow``
    registers the challenger, every API replica scores it off the request path, and the ``live-gate``
    deployment promotes it only when it is better beyond noise on live labelled rows (and the offline
    gate still passes); ``canary`` does the same and also lets it answer a growing share of requests
    (``canary_steps``) before it is promoted.
    """

    policy: Policy = "offline"
    # --- the live gate: planned looks at min_positives, 2x, 4x ... labelled positives (max_looks of
    # them), each at confidence 1 - (1 - confidence) / max_looks (Bonferroni over the looks), so the
    # chance of promoting a challenger that is not better stays below (1 - confidence) / 2 however
    # often the gate runs. Counts positives, not rows: PR-AUC's noise is set by the positives.
    min_positives: int = Field(default=50, ge=5)
    max_looks: int = Field(default=3, ge=1, le=10)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    min_gain: float = 0.0  # the live PR-AUC gain's interval must lie above this to promote
    bootstrap_rounds: int = Field(default=1000, ge=100)
    # The evidence window: a challenger still undecided this long after its live evaluation began is
    # rejected (the retrain that follows can try again).
    max_duration_s: float = Field(default=7 * 86400.0, gt=0)
    # Shadow or canary errors (raised, timed out, nonsense answers) the challenger may make: the lower
    # end of the error rate's interval above this rejects it (the champion makes none).
    max_error_rate: float = Field(default=0.01, ge=0, lt=1)
    # Labels received within this long are left for the next run (a shadow answer may still be on its way).
    settle_s: float = Field(default=5.0, ge=0)
    # --- the shadow, in every API replica
    shadow_share: float = Field(default=1.0, ge=0, le=1)  # of the answered requests the challenger scores
    shadow_queue_rows: int = Field(default=20_000, ge=1)  # waiting to be shadow-scored; beyond: shed
    shadow_batch_rows: int = Field(default=512, ge=1)  # rows per shadow model call, at most
    shadow_timeout_s: float = Field(default=2.0, gt=0)  # a shadow model call taking longer has hung
    stats_interval_s: float = Field(default=10.0, gt=0)  # each replica's counts reach the log this often
    # --- the canary (policy canary, or `reggaeton canary start`)
    canary_steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)  # shares of the requests, in order
    canary_step_s: float = Field(default=3600.0, ge=0)  # at least this long at each step
    canary_min_requests: int = Field(default=200, ge=1)  # canary requests a step must see to advance
    canary_timeout_s: float = Field(default=0.25, gt=0)  # a canary answer later than this: champion's
    # The canary's mean answer time may exceed the champion's by this much (the interval's lower end
    # above it aborts); per (replica, stats interval) clusters, unpaired.
    canary_latency_budget_ms: float = Field(default=5.0, ge=0)
    # Under policy canary, the challenger shadows this long before its first canary step.
    canary_after_s: float = Field(default=0.0, ge=0)

    @field_validator("canary_steps")
    @classmethod
    def _increasing_shares(cls, steps: tuple[float, ...]) -> tuple[float, ...]:
        if not steps or any(not 0 < share <= 1 for share in steps) or list(steps) != sorted(set(steps)):
            raise ValueError("canary_steps must be increasing shares in (0, 1], e.g. [0.05, 0.25, 0.5, 1]")
        return steps


class ServingSettings(_Section):
    """The FastAPI prediction server."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Named in every response's replica header (names.REPLICA_HEADER); default: the host name (in a
    # container, its id), so a balancer's spread over replicas can be seen.
    replica_name: str | None = None
    poll_interval_s: float = Field(default=5.0, gt=0)
    # An idle client connection is kept open this long (uvicorn's default: 5 s). Longer than the idle
    # timeout of whatever sits in front (haproxy purges its idle ones every 5 s, cloud balancers after
    # 60 s), so the client closes it first: a request sent on a connection the server was closing at that
    # moment fails (httpx.ReadError, a balancer's 502), and a stalled loop or client made that moment come.
    keep_alive_s: int = Field(default=75, ge=1)
    max_batch: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    admin_token: SecretStr = SecretStr(LOCAL_PLACEHOLDER_SECRET)  # /admin routes
    # POST /feedback (the labelling side): its own credential, not the admin token outside local mode.
    feedback_token: SecretStr = SecretStr(LOCAL_PLACEHOLDER_SECRET)
    api_key: SecretStr | None = None  # POST /predict requires it (X-API-Key) when set
    prediction_log_url: str | None = None  # default: SQLite file in the state folder
    log_queue_size: int = Field(default=100_000, ge=1)
    log_batch_size: int = Field(default=500, ge=1)
    log_flush_interval_s: float = Field(default=0.2, gt=0)
    # A log write not returned after this long counts as the log database being unavailable (metric,
    # event), e.g. a table lock held elsewhere; the rows wait in the journal meanwhile.
    log_write_stall_s: float = Field(default=5.0, gt=0)
    model_cache_dir: Path | None = None  # default: folder in the state folder
    micro_batch_max: int = Field(default=64, ge=1)
    # The prediction log's local journal: every answered row is written there (one write per model
    # batch) before its response leaves, and waits there while the log database is unavailable.
    durable_log: bool = True
    spool_dir: Path | None = None  # default: folder in the state folder (a named volume in containers)
    # Above 1, spool_dir is shared by API replicas: each claims a free subfolder replica-0 .. replica-<n-1>.
    spool_slots: int = Field(default=1, ge=1, le=256)
    spool_max_bytes: int = Field(default=256 * 2**20, ge=4096)  # over this, /predict answers 503
    spool_segment_bytes: int = Field(default=4 * 2**20, ge=1024)  # journal files rotate at this size
    spool_fsync: bool = False  # fsync each write: survives power loss, not only a killed process
    retry_after_s: int = Field(default=1, ge=1)  # Retry-After of a 503 while the log cannot take rows
    log_close_timeout_s: float = Field(default=10.0, gt=0)  # durable: rows left at shutdown stay spooled

    _optional_key = field_validator("api_key", mode="before")(_blank_is_none)


class MonitoringSettings(_Section):
    """NannyML monitoring and the alert policy."""

    chunk_size: int | None = 500  # rows per chunk; None to chunk by period
    chunk_period: str | None = None  # e.g. "h" or "D" when chunking by period
    min_rows: int = Field(default=200, ge=1)  # below this a window is "insufficient data"
    roc_auc_threshold: float = 0.80
    f1_threshold: float | None = None
    consecutive_chunks: int = Field(default=2, ge=1)
    results_url: str | None = None  # default: SQLite file in the state folder
    reference_chunks: int = Field(default=5, ge=2)  # reference chunks NannyML's thresholds come from
    max_chunks: int = Field(default=200, ge=1)  # per run; larger windows get larger chunks
    min_labelled: int = Field(default=50, ge=2)  # realized performance needs this many labels a chunk
    min_labelled_positives: int = Field(default=5, ge=1)  # ... and this many of each class
    # Univariate drift counts from this many drifting features: NannyML's reference-chunk thresholds
    # flag up to 4 of the 7 features on stable traffic, a real shift moves 6-7 (see monitoring tests).
    drift_min_features: int = Field(default=5, ge=1)
    settle_s: float = Field(default=2.0, ge=0)  # leave the newest rows for the next run (writes in flight)
    history_chunks: int = Field(default=20, ge=0)  # stored chunks shown again in the plot
    relabel_chunks: int = Field(default=10, ge=0)  # latest stored chunks whose late labels are counted
    nannyml_usage_logging: bool = False  # NannyML telemetry (off: nothing leaves the machine)


class RetentionSettings(_Section):
    """How long the prediction log keeps rows live, and where the retention flow archives older ones."""

    # Predictions (with their feedback labels) and shadow answers older than this leave the live log for
    # the archive. Keep it longer than the longest label delay: a label for an archived prediction is
    # refused (410), and realized performance counts the labels that came while the row was live.
    keep_days: float = Field(default=30.0, gt=0)
    archive_dir: Path | None = None  # default: folder in the state folder (a volume workers share)
    part_rows: int = Field(default=1_000_000, ge=1_000)  # rows per archive file at most (and per day)


class PrefectSettings(_Section):
    """Prefect server, work pool and notifications."""

    api_url: str | None = None  # default: http://host:port/api
    host: str = "127.0.0.1"
    port: int = 4200
    work_pool: str = names.WORK_POOL
    tuning_pool: str = names.TUNING_POOL  # one tuning run per worker container (`--limit 1`)
    webhook_url: str | None = None  # notifications; default: the local alert receiver
    alert_receiver_port: int = 8765
    notification_block: str = "reggaeton-alerts"  # name of the CustomWebhookNotificationBlock
    debounce_s: int = Field(default=600, ge=0)  # repeated `degraded` events within this notify once
    # Flow runs send a heartbeat this often (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set by the stack).
    heartbeat_s: int = Field(default=names.FLOW_HEARTBEAT_S, ge=30)  # Prefect refuses less than 30
    # A running flow run this many heartbeats silent is marked Crashed (its process is gone). Two is the
    # least that tolerates one late beat; tests of the rule use it to wait 60 s instead of 90.
    zombie_after_beats: int = Field(default=3, ge=2)
    # Workers ask their pool for runs this often (PREFECT_WORKER_QUERY_SECONDS, set by the stack).
    worker_poll_s: float = Field(default=names.WORKER_POLL_S, gt=0)
    # A flow run Pending (submitted, its process not yet Running) longer than this is marked Crashed:
    # its worker died while submitting it, and it holds its deployment's one concurrency slot.
    stranded_after_s: int = Field(default=120, ge=10)


class SigningSettings(_Section):
    """Signed decision records (reggaeton/decision_record.py): the deciding side signs, the API verifies.

    The private key belongs to the promoting side only (flows on the worker, the operator's command line);
    an API replica gets the public keys. Key texts are the compact forms of ``decision_record``.
    """

    # Default: the file <key_dir>/decision-signing.key (`reggaeton up` creates the pair in local mode).
    private_key: SecretStr | None = None
    # Public keys the API trusts, comma-separated (two during a rotation). Default: the file
    # <key_dir>/decision-verify.pub.
    public_keys: str | None = None
    key_dir: Path | None = None  # default: <state>/keys

    _optional_keys = field_validator("private_key", "public_keys", mode="before")(_blank_is_none)


class WatchdogSettings(_Section):
    """The watchdog process: the backstop of the stranded-run rule and the loop's dead-man's switch."""

    every_s: float = Field(default=30.0, gt=0)  # how often it looks
    # `reggaeton.monitor.stale` when no `monitor` run completed for this many of its schedule intervals.
    monitor_intervals: float = Field(default=3.0, gt=1)
    # `reggaeton.retrain.stale` when no `train-and-promote` run completed for this many of its intervals
    # (weekly: 1.5 = the Monday run and half a week of grace missed).
    retrain_intervals: float = Field(default=1.5, gt=1)
    # Runs cancelled by a deployment concurrency limit, within `cancelled_window_s`, that notify.
    cancelled_threshold: int = Field(default=2, ge=1)
    cancelled_window_s: int = Field(default=900, ge=1)


class BatchSettings(_Section):
    """Batch scoring of a catalogue (``reggaeton score``, the score-catalogue deployment)."""

    # Rows per chunk: the unit of parallel work, of the output's part files and of resuming. Changing it
    # changes the part layout, so a run is resumed only with the chunk size it started with.
    chunk_rows: int = Field(default=100_000, ge=1)
    # Scoring processes; None: one per core this process may run on (os.sched_getaffinity).
    workers: int | None = Field(default=None, ge=1)
    # How often progress is reported where it is not redrawn in place (a pipe, CI logs, the Prefect
    # progress artifact).
    progress_every_s: float = Field(default=5.0, gt=0)


class Settings(BaseSettings):
    """All settings of the system, frozen. Build once at an entry point and pass it down."""

    model_config = SettingsConfigDict(
        env_prefix="REGGAETON_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    mode: Literal["local", "production"] = "local"
    state_dir: Path = Path(".state")
    mlflow: MLflowSettings = MLflowSettings()
    data: DataSettings = DataSettings()
    training: TrainingSettings = TrainingSettings()
    promotion: PromotionSettings = PromotionSettings()
    live: LiveSettings = LiveSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    retention: RetentionSettings = RetentionSettings()
    prefect: PrefectSettings = PrefectSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    batch: BatchSettings = BatchSettings()
    signing: SigningSettings = SigningSettings()

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Self:
        if self.mode != "local":
            self._refuse_example_secrets()
        ports = {
            "mlflow.port": self.mlflow.port,
            "serving.port": self.serving.port,
            "prefect.port": self.prefect.port,
            "prefect.alert_receiver_port": self.prefect.alert_receiver_port,
        }
        for name, port in ports.items():
            clashes = [other for other, value in ports.items() if value == port and other != name]
            if clashes:
                # The local stack would take the first service to answer there for the other one.
                raise ValueError(f"{name} and {clashes[0]} are both {port}: each local service needs its own")
        return self

    def _given_secrets(self) -> dict[str, SecretStr]:
        """The secrets this process was given (a default placeholder is not given: see serving_problems)."""
        sections = {"serving": self.serving, "signing": self.signing, "mlflow": self.mlflow}
        fields = {
            "serving": ("admin_token", "feedback_token", "api_key"),
            "signing": ("private_key",),
            "mlflow": tuple(f"{account}_password" for account in names.MLFLOW_ACCOUNTS),
        }
        given = {}
        for section, names_ in fields.items():
            for name in names_:
                value = getattr(sections[section], name)
                if name in sections[section].model_fields_set and value is not None:
                    given[f"{section}.{name}"] = value
        return given

    def _refuse_example_secrets(self) -> None:
        # Each process gets only the secrets it uses (the worker no API token): a secret left at its
        # placeholder is refused where it is used (serving_problems), one given as an example value here.
        given = self._given_secrets()
        for path, secret in given.items():
            if secret.get_secret_value() in EXAMPLE_SECRETS:
                raise ValueError(
                    f"{_env_name(path)} is an example value, not a secret: set your own outside local mode"
                )
        tokens = [given.get(path) for path in ("serving.feedback_token", "serving.admin_token")]
        if tokens[0] is not None and tokens[1] is not None and tokens[0] == tokens[1]:
            # Whoever labels predictions must not be able to reload models: one credential per purpose.
            raise ValueError(
                f"{_env_name('serving.feedback_token')} equals {_env_name('serving.admin_token')}: "
                "give each its own value outside local mode"
            )
        urls = {
            "mlflow.tracking_uri": self.mlflow.tracking_uri,
            "mlflow.registry_uri": self.mlflow.registry_uri,
            "training.optuna_storage": self.training.optuna_storage,
            "serving.prediction_log_url": self.serving.prediction_log_url,
            "monitoring.results_url": self.monitoring.results_url,
        }
        for path, url in urls.items():
            if url and urlsplit(url).password in EXAMPLE_SECRETS:
                raise ValueError(
                    f"the password in {_env_name(path)} is an example value, not a secret: "
                    "set your own outside local mode"
                )

    def serving_problems(self) -> list[str]:
        """Why an API server must not start with these settings (empty when it may).

        Outside local mode the API's own credentials must be set: an admin token and a feedback token
        (each its own), never the placeholder every process defaults to.
        """
        if self.mode == "local":
            return []
        given = self._given_secrets()
        return [
            f"{_env_name(path)} is not set: the API needs its own outside local mode"
            for path in ("serving.admin_token", "serving.feedback_token")
            if path not in given
        ]

    # Resolved locations: the defaults all live in one state folder.
    @property
    def state_path(self) -> Path:
        """Absolute state folder."""
        return self.state_dir.expanduser().resolve()

    def _sqlite(self, filename: str) -> str:
        return f"sqlite:///{self.state_path / filename}"

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI."""
        return self.mlflow.tracking_uri or self._sqlite("mlflow.db")

    @property
    def registry_uri(self) -> str:
        """MLflow registry URI."""
        return self.mlflow.registry_uri or self.tracking_uri

    @property
    def artifact_root(self) -> str:
        """Where a local MLflow server or a SQLite store keeps artifacts."""
        return self.mlflow.artifact_root or (self.state_path / "mlartifacts").as_uri()

    @property
    def optuna_storage(self) -> str:
        """Optuna RDB storage URL (a Postgres one with :data:`POSTGRES_CONNECT_ARGS`)."""
        return with_postgres_timeouts(self.training.optuna_storage or self._sqlite("optuna.db"))

    @property
    def prediction_log_url(self) -> str:
        """SQLAlchemy URL of the prediction log."""
        return self.serving.prediction_log_url or self._sqlite("predictions.db")

    @property
    def monitoring_results_url(self) -> str:
        """SQLAlchemy URL of the monitoring results table."""
        return self.monitoring.results_url or self._sqlite("monitoring.db")

    @property
    def model_cache_dir(self) -> Path:
        """Local cache of the last good served model."""
        return self.serving.model_cache_dir or self.state_path / "model-cache"

    @property
    def replica_name(self) -> str:
        """The name this API process gives in the replica header (``serving.replica_name``, else the host)."""
        return self.serving.replica_name or socket.gethostname()

    @property
    def archive_path(self) -> Path:
        """Where the retention flow archives old log rows (``RetentionSettings.archive_dir``)."""
        return (self.retention.archive_dir or self.state_path / "archive").expanduser().resolve()

    @property
    def spool_dir(self) -> Path:
        """The prediction log's journal folder (see ``ServingSettings.durable_log``)."""
        return self.serving.spool_dir or self.state_path / "prediction-spool"

    @property
    def signing_key_dir(self) -> Path:
        """Where the decision signing keys live by default (see :class:`SigningSettings`)."""
        return self.signing.key_dir or self.state_path / "keys"

    @property
    def prefect_home(self) -> Path:
        """PREFECT_HOME for the local Prefect server."""
        return self.state_path / "prefect"

    @property
    def prefect_api_url(self) -> str:
        """The Prefect API every emitter talks to."""
        return self.prefect.api_url or f"http://{self.prefect.host}:{self.prefect.port}/api"

    @property
    def zombie_after_s(self) -> int:
        """Seconds of heartbeat silence after which a running flow run is marked Crashed."""
        return self.prefect.zombie_after_beats * self.prefect.heartbeat_s

    @property
    def alert_webhook_url(self) -> str:
        """Where Prefect notifications are sent: the configured webhook or the local alert receiver."""
        return self.prefect.webhook_url or f"http://127.0.0.1:{self.prefect.alert_receiver_port}/alerts"

    @property
    def alerts_path(self) -> Path:
        """The file the local alert receiver appends alerts to (JSON lines)."""
        return self.state_path / "alerts.jsonl"

    def ensure_state_dir(self) -> Path:
        """Create the state folder (called by entry points, never at import)."""
        self.state_path.mkdir(parents=True, exist_ok=True)
        return self.state_path
