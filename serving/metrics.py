"""Prometheus metrics of one app instance (its own registry, so tests can run several apps in one process)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from reggaeton import names

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    """Every metric the server exposes on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "reggaeton_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "reggaeton_http_request_duration_seconds",
            "Time from request start to the last response byte.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "reggaeton_predictions",
            "Songs scored, by model version and label.",
            ["model_version", "label"],
            registry=r,
        )
        self.positive_rate = Gauge(
            "reggaeton_predicted_positive_rate",
            "Share of songs labelled reggaeton by the version being served, since it was loaded.",
            registry=r,
        )
        self.model_version = Gauge(
            "reggaeton_model_version_info",
            "1 for the version being served.",
            ["model_version", "source"],
            registry=r,
        )
        self.model_loaded_at = Gauge(
            "reggaeton_model_loaded_timestamp_seconds", "When the served version was loaded.", registry=r
        )
        self.reloads = Counter(
            "reggaeton_model_reloads",
            "Registry checks by outcome (swapped, unchanged, refused, unavailable, no_champion).",
            ["outcome"],
            registry=r,
        )
        self.unauthorized = Counter(
            "reggaeton_unauthorized_champions",
            "Times the champion alias was found pointing at a version no signed decision made champion "
            "(one per move; the version was not served).",
            registry=r,
        )
        self.unauthorized_version = Gauge(
            "reggaeton_champion_alias_unauthorized",
            "1 for the version the champion alias points at while no signed decision authorizes it.",
            ["version"],
            registry=r,
        )
        self.decision_sequence = Gauge(
            "reggaeton_served_decision_sequence",
            "Sequence of the signed decision record of the version being served (0: none).",
            registry=r,
        )
        self.model_batch_rows = Histogram(
            "reggaeton_model_batch_rows",
            "Rows per model call (micro-batching).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.champion_degraded = Gauge(
            "reggaeton_champion_degraded",
            "1 while monitoring holds the champion degraded (until a run shows it recovered), else 0.",
            ["model_version"],
            registry=r,
        )
        self.champion_degraded_since = Gauge(
            "reggaeton_champion_degraded_since_timestamp_seconds",
            "Since when monitoring holds the champion degraded (0 while it is not).",
            registry=r,
        )
        self._define_log_metrics(r)
        self._define_live_metrics(r)

    def _define_log_metrics(self, r: CollectorRegistry) -> None:
        """The prediction log's queue, database and journal (spool)."""
        self.log_queue_rows = Gauge(
            "reggaeton_prediction_log_queue_rows", "Prediction rows waiting to be written.", registry=r
        )
        self.log_queue_full = Counter(
            "reggaeton_prediction_log_queue_full",
            "Times the in-memory log queue was full (durable: rows read back from the journal; else: a 503).",
            registry=r,
        )
        self.log_rows_written = Counter(
            "reggaeton_prediction_log_rows_written", "Prediction rows written to the log.", registry=r
        )
        self.log_write_errors = Counter(
            "reggaeton_prediction_log_write_errors", "Failed log writes (retried, rows kept).", registry=r
        )
        self.log_database_up = Gauge(
            "reggaeton_prediction_log_database_up",
            "1 while the prediction log database takes writes, 0 while they fail (rows wait in the spool).",
            registry=r,
        )
        self.log_spool_bytes = Gauge(
            "reggaeton_prediction_log_spool_bytes", "Bytes in the prediction log's journal.", registry=r
        )
        self.log_rows_spooled = Counter(
            "reggaeton_prediction_log_rows_spooled",
            "Prediction rows written to the journal before their response (every row when durable).",
            registry=r,
        )
        self.log_rows_replayed = Counter(
            "reggaeton_prediction_log_rows_replayed",
            "Prediction rows inserted from the journal on disk (after an outage, or left by an earlier run).",
            registry=r,
        )
        self.log_spool_oldest_age = Gauge(
            "reggaeton_prediction_log_spool_oldest_age_seconds",
            "Age of the oldest answered row not yet in the log database (0 when none).",
            registry=r,
        )
        self.log_spool_errors = Counter(
            "reggaeton_prediction_log_spool_errors", "Journal writes the disk refused.", registry=r
        )
        self.log_refused = Counter(
            "reggaeton_prediction_log_refused",
            "Prediction requests answered 503 because the log could not take their rows.",
            registry=r,
        )

    def _define_live_metrics(self, r: CollectorRegistry) -> None:
        """The challenger under live evaluation: its shadow answers and its canary requests."""
        self.challenger = Gauge(
            "reggaeton_challenger_info",
            "1 for the challenger this replica shadows; share: of the requests it answers as a canary.",
            ["model_version", "share"],
            registry=r,
        )
        self.shadow_rows = Counter(
            "reggaeton_shadow_rows",
            "Rows offered to the shadow model, by outcome: scored, shed (queue full or model hung), raised, "
            "timeout, invalid (not a probability); then written or dropped by the shadow writer.",
            ["outcome"],
            registry=r,
        )
        self.shadow_queue_rows = Gauge(
            "reggaeton_shadow_queue_rows", "Rows waiting to be shadow-scored.", registry=r
        )
        self.shadow_batch_seconds = Histogram(
            "reggaeton_shadow_batch_seconds",
            "Time of one shadow model call (off the request path).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.canary_requests = Counter(
            "reggaeton_canary_requests",
            "Requests routed to the canary, by outcome: answered, or answered by the champion because the "
            "canary raised, timed out or answered nonsense.",
            ["outcome"],
            registry=r,
        )
        self.challenger_episodes = Counter(
            "reggaeton_challenger_failing_episodes",
            "Episodes of a challenger failing live (raised, hung, nonsense), by role (shadow, canary); one "
            "event each.",
            ["role"],
            registry=r,
        )

    def set_challenger(self, version: str | None, share: float) -> None:
        """Point the challenger gauge at the challenger now shadowed (None: none)."""
        self.challenger.clear()
        if version is not None:
            self.challenger.labels(model_version=version, share=f"{share:g}").set(1)

    def set_monitoring(self, version: str, tags: Mapping[str, str]) -> None:
        """The champion's monitoring state, from the tags the monitor puts on its version."""
        degraded = tags.get(names.Tag.MONITORING_STATUS) == "degraded"
        self.champion_degraded.clear()
        self.champion_degraded.labels(model_version=version).set(1 if degraded else 0)
        since = tags.get(names.Tag.MONITORING_SINCE) if degraded else None
        try:
            self.champion_degraded_since.set(datetime.fromisoformat(since).timestamp() if since else 0)
        except ValueError:
            self.champion_degraded_since.set(0)

    def set_served(self, version: str, source: str, loaded_at: float, sequence: int | None) -> None:
        """Point the version gauge at a newly served version."""
        self.model_version.clear()
        self.model_version.labels(model_version=version, source=source).set(1)
        self.model_loaded_at.set(loaded_at)
        self.positive_rate.set(0)
        self.decision_sequence.set(sequence or 0)

    def set_unauthorized(self, version: str | None) -> None:
        """The alias's unauthorized version (None: the alias is authorized)."""
        self.unauthorized_version.clear()
        if version is not None:
            self.unauthorized_version.labels(version=version).set(1)
