"""Automations as code: who is told what when the loop moves, and the retrain, applied idempotently by name.

Notifications go through one built-in Prefect notification block (a custom webhook, Slack-compatible
payload ``{"text": ...}``) pointed at ``settings.alert_webhook_url``. The retrain on
``reggaeton.model.degraded`` runs the `train-and-promote` deployment, debounced **per model version**
(``for_each`` on the event's version label) over ``prefect.debounce_s``: repeats of one version's
``degraded`` start one retrain and send one notification per window, and the first ``degraded`` of a
new champion always does both, whatever the previous version's window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from prefect.automations import (
    AutomationCore,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    RunDeployment,
    SendNotification,
)
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from adapters.prefect_api import HEARTBEAT, find_deployment, flow_run_event, flow_run_resource, prefect_api
from reggaeton.names import TRAIN_DEPLOYMENT, Event
from reggaeton.settings import Settings

logger = logging.getLogger(__name__)

# Every automation this module owns starts with this prefix (and carries the tag below).
PREFIX = "reggaeton"
TAG = "reggaeton"

FLOW_RUN_FAILED = flow_run_event("Failed")
FLOW_RUN_CRASHED = flow_run_event("Crashed")
FLOW_RUN_HEARTBEAT = flow_run_event(HEARTBEAT)
FLOW_RUN_RUNNING = flow_run_event("Running")
# A flow-run event is named after the state's name, not its type: a worker's Pending is "Submitting".
FLOW_RUN_PENDING = flow_run_event("Pending")
FLOW_RUN_SUBMITTING = flow_run_event("Submitting")
# A run handed back to the schedule by a stopping worker (adapters.prefect_api.hand_back_pending_runs).
FLOW_RUN_SCHEDULED = flow_run_event("Scheduled")
FLOW_RUN_FINAL = frozenset(
    {flow_run_event("Completed"), FLOW_RUN_FAILED, flow_run_event("Cancelled"), FLOW_RUN_CRASHED}
)
# Flow runs send a heartbeat every `prefect.heartbeat_s` (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set by the
# stack); a run silent for `Settings.zombie_after_s` (its worker was killed with it, the machine
# rebooted) is marked Crashed.
# Rendered by the Prefect server from the crashed flow run the triggering event names.
RERUN_REQUEST_TEMPLATE = {
    "__prefect_kind": "jinja",
    "template": "{{ flow_run.parameters.get('request_id') or flow_run.id }}",
}

# Slack's incoming webhooks take {"text": ...}; the local receiver reads the same shape.
WEBHOOK_JSON: dict[str, Any] = {"text": "{{subject}}\n{{body}}"}

_MODEL_EVENT_BODY = (
    "event: {{ event.event }}\n"
    "occurred: {{ event.occurred }}\n"
    "resource: {{ event.resource.id }}\n"
    "payload: {{ event.payload }}"
)
# A degraded version and the fate of its retrain, then the event itself.
_DEGRADED_BODY = "{{ event.payload.get('summary', '') }}\n" + _MODEL_EVENT_BODY
# Automations evaluated per model and version: the event's resource and its version label.
PER_VERSION = frozenset({"prefect.resource.id", Event.VERSION_LABEL})
_FLOW_RUN_BODY = (
    "event: {{ event.event }}\n"
    "occurred: {{ event.occurred }}\n"
    "flow run: {{ flow.name }}/{{ flow_run.name }} ({{ flow_run.id }})\n"
    "state: {{ flow_run.state.name }}: {{ flow_run.state.message }}"
)


@dataclass(frozen=True)
class Notice:
    """One notification rule: which events, what the message says, how repeats are damped."""

    name: str
    description: str
    events: frozenset[str]
    subject: str
    body: str
    debounce: timedelta = timedelta(0)
    # Resource labels the debounce is counted per (e.g. the model version); empty: one count for all.
    for_each: frozenset[str] = frozenset()


# Model events that only notify: (event, automation suffix, subject, description).
_MODEL_NOTICES = (
    (Event.PROMOTED, "promoted", "new champion promoted", "A challenger beat the champion and was promoted."),
    (
        Event.REJECTED,
        "rejected",
        "challenger rejected",
        "The gate kept the champion: the challenger was not better beyond noise.",
    ),
    (
        Event.RELOAD_FAILED,
        "reload-failed",
        "API refused the new champion",
        "The API refused a new champion version and keeps serving the previous one.",
    ),
    (
        Event.SHADOW_STARTED,
        "shadow-started",
        "challenger under live evaluation",
        "A challenger passed the offline gate and is shadow-scored on live traffic (live policy).",
    ),
    (
        Event.CANARY_STEP,
        "canary-step",
        "canary moved a step",
        "The live gate moved the canary: the challenger now answers a larger share of the requests.",
    ),
    (
        Event.CANARY_ABORTED,
        "canary-aborted",
        "canary aborted",
        "A canary was aborted (errors, latency or live performance worse beyond noise, or an operator): "
        "its share is back to 0.",
    ),
    (
        Event.CHALLENGER_FAILING,
        "challenger-failing",
        "challenger failing on live traffic",
        "An API replica's challenger raised, hung or answered nonsense (as a shadow, or as a canary the "
        "champion then answered for); once per episode.",
    ),
    (
        Event.LOG_UNAVAILABLE,
        "log-unavailable",
        "prediction log database unavailable",
        "An API cannot write its prediction log database; answered rows wait in its local spool.",
    ),
    (
        Event.LOG_RECOVERED,
        "log-recovered",
        "prediction log database writable again",
        "An API writes its prediction log database again and replays its spool.",
    ),
)


def notices(settings: Settings) -> list[Notice]:
    """The notification rules of the loop (pure: no Prefect calls)."""
    window = timedelta(seconds=settings.prefect.debounce_s)
    degraded = Notice(
        name=f"{PREFIX}-notify-degraded",
        description="A version degraded; its retrain runs (one per version per debounce window).",
        events=frozenset({Event.DEGRADED}),
        subject="[reggaeton] model degraded: retraining",
        body=_DEGRADED_BODY,
        debounce=window,
        for_each=PER_VERSION,
    )
    suppressed = Notice(
        name=f"{PREFIX}-notify-retrain-suppressed",
        description="A version is still degraded, its retrain already requested: why, and when the next.",
        events=frozenset({Event.RETRAIN_SUPPRESSED}),
        subject="[reggaeton] model still degraded: retrain suppressed",
        body=_DEGRADED_BODY,
        debounce=window,
        for_each=PER_VERSION,
    )
    flow_run_failed = Notice(
        name=f"{PREFIX}-notify-flow-run-failed",
        description="A flow run failed or crashed.",
        events=frozenset({FLOW_RUN_FAILED, FLOW_RUN_CRASHED}),
        subject="[reggaeton] flow run failed",
        body=_FLOW_RUN_BODY,
    )
    model_events = [
        Notice(
            name=f"{PREFIX}-notify-{suffix}",
            description=description,
            events=frozenset({event}),
            subject=f"[reggaeton] {subject}",
            body=_MODEL_EVENT_BODY,
        )
        for event, suffix, subject, description in _MODEL_NOTICES
    ]
    unauthorized = Notice(
        name=f"{PREFIX}-notify-unauthorized-champion",
        description="The champion alias points at a version no signed decision made champion; the API "
        "keeps serving the current champion. `reggaeton promote` accepts it, `reggaeton rollback` goes back.",
        events=frozenset({Event.UNAUTHORIZED_CHAMPION}),
        subject="[reggaeton] champion alias moved without a decision: not served",
        body=_MODEL_EVENT_BODY,
        # Every API replica reports the move: one notification per version moved to, per window.
        debounce=timedelta(seconds=settings.prefect.debounce_s),
        for_each=frozenset({Event.VERSION_LABEL}),
    )
    return [degraded, suppressed, *model_events, unauthorized, flow_run_failed]


def to_automation(notice: Notice, block_document_id: UUID) -> AutomationCore:
    """The Prefect automation for one rule: a reactive trigger, threshold 1, debounced by `within`."""
    return AutomationCore(
        name=notice.name,
        description=notice.description,
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            expect=set(notice.events),
            for_each=set(notice.for_each),
            posture=Posture.Reactive,
            threshold=1,
            within=notice.debounce,
        ),
        actions=[
            SendNotification(block_document_id=block_document_id, subject=notice.subject, body=notice.body)
        ],
    )


RETRAIN_ON_DEGRADED = f"{PREFIX}-retrain-on-degraded"
# train_and_promote's ``reason`` parameter when the champion degraded (flows/promote.py: DEGRADED).
DEGRADED_REASON = "degraded"


def retrain_automation(deployment_id: UUID, settings: Settings) -> AutomationCore:
    """Run `train-and-promote` on ``reggaeton.model.degraded``, at most once per model version per window.

    A reactive trigger with threshold 1 fires on the first event of a bucket and ignores the rest of its
    ``within`` window; ``for_each`` keeps one bucket per version, so a new champion's first ``degraded``
    is never swallowed by the window its predecessor opened. The run says why it runs (``reason``): the
    champion degraded, so it retrains even while a challenger is under live evaluation (which it then
    supersedes; ``flows/promote.py``).
    """
    return AutomationCore(
        name=RETRAIN_ON_DEGRADED,
        description="Run train-and-promote when a version degrades: once per version per debounce window.",
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            expect={Event.DEGRADED},
            for_each=set(PER_VERSION),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(seconds=settings.prefect.debounce_s),
        ),
        actions=[
            RunDeployment(
                source="selected", deployment_id=deployment_id, parameters={"reason": DEGRADED_REASON}
            )
        ],
    )


def _crash_when_silent(
    name: str, description: str, *, after: set[str], expect: set[str], after_s: int, message: str
) -> AutomationCore:
    """Crash each flow run that, after one of ``after``, emits none of ``expect`` within ``after_s``.

    The state change is not forced: the server refuses to move a run already in a final state, so a
    late event can never turn a Completed run into a Crashed one.
    """
    return AutomationCore(
        name=f"{PREFIX}-{name}",
        description=description,
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            after=after,
            expect=expect,
            match={"prefect.resource.id": flow_run_resource("*")},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)],
    )


def zombie_automation(after_s: int) -> AutomationCore:
    """Mark a flow run Crashed when its heartbeats stop, or never come, before it reached a final state.

    The silence is counted from the last heartbeat or from the server's own Running event: a run whose
    process is killed before its first heartbeat reaches the server (it is sent asynchronously) would
    otherwise stay Running for ever and hold its deployment's concurrency slot.
    """
    return _crash_when_silent(
        "crash-silent-flow-runs",
        f"A flow run without a heartbeat for {after_s} s is marked Crashed.",
        after={FLOW_RUN_RUNNING, FLOW_RUN_HEARTBEAT},
        expect={FLOW_RUN_HEARTBEAT, *FLOW_RUN_FINAL},
        after_s=after_s,
        message=f"No heartbeat for {after_s} s: the run's process is gone.",
    )


def rerun_crashed_automation(deployment_id: UUID, settings: Settings) -> AutomationCore:
    """Run the retrain again when a run of it crashed (worker killed mid-run); at most once per window."""
    return AutomationCore(
        name=f"{PREFIX}-rerun-crashed-retrain",
        description="A crashed train-and-promote run is run again (debounced like the retrain trigger).",
        enabled=True,
        tags=[TAG],
        trigger=EventTrigger(
            expect={FLOW_RUN_CRASHED},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(seconds=settings.prefect.debounce_s),
        ),
        # The rerun serves the same retrain request as the crashed run (its own, or the one it was
        # itself rerunning): train-and-promote then gates a version the crashed run already registered.
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                parameters={"request_id": RERUN_REQUEST_TEMPLATE},
            )
        ],
    )


# --- the loop never stops silently (issue 15): stranded runs and the watchdog's events ----------------
def stranded_automation(settings: Settings) -> AutomationCore:
    """Mark a flow run Crashed when it stays Pending (submitted, never Running) past the bound.

    A run holds its deployment's concurrency slot from Pending: one whose worker died while submitting
    it would hold the slot, and every later run of a deployment limited to one would be cancelled.
    Crashed frees the slot and lets the crash handling act (notification, rerun of a retrain). The
    watchdog (`monitoring/watchdog.py`) is the backstop should this proactive trigger not fire.
    """
    after_s = settings.prefect.stranded_after_s
    return _crash_when_silent(
        "crash-stranded-flow-runs",
        f"A flow run Pending for {after_s} s (its worker died submitting it) is marked Crashed.",
        after={FLOW_RUN_PENDING, FLOW_RUN_SUBMITTING},
        # Handed back to the schedule is not stranded: its next submission starts the clock again.
        expect={FLOW_RUN_RUNNING, FLOW_RUN_SCHEDULED, *FLOW_RUN_FINAL},
        after_s=after_s,
        message=f"Pending for {after_s} s: its worker died while submitting it.",
    )


_WATCHDOG_NOTICES = (
    (Event.MONITOR_STALE, "monitor-stale", "monitoring is stale: no monitor run completed"),
    (Event.MONITOR_RECOVERED, "monitor-recovered", "monitoring recovered: a monitor run completed"),
    (Event.RETRAIN_STALE, "retrain-stale", "the weekly retrain missed its window"),
    (Event.RETRAIN_RECOVERED, "retrain-recovered", "the retrain completed again"),
    (Event.RUNS_CANCELLED, "runs-cancelled", "runs cancelled by the deployment concurrency limit"),
)


def watchdog_notices() -> list[Notice]:
    """Notifications of the watchdog's events (it emits each once; these only pass them on)."""
    return [
        Notice(
            name=f"{PREFIX}-notify-{suffix}",
            description=f"The watchdog emitted {event}.",
            events=frozenset({event}),
            subject=f"[reggaeton] {subject}",
            body=_MODEL_EVENT_BODY,
        )
        for event, suffix, subject in _WATCHDOG_NOTICES
    ]


def loop_guard_automations(settings: Settings, block_id: UUID) -> list[AutomationCore]:
    """The stranded-run rule and the notifications of the watchdog's events."""
    return [stranded_automation(settings), *(to_automation(n, block_id) for n in watchdog_notices())]


def ensure_notification_block(settings: Settings) -> UUID:
    """Create or update the webhook notification block; its id is stable across runs."""
    block = CustomWebhookNotificationBlock(
        name=settings.prefect.notification_block,
        url=settings.alert_webhook_url,
        method="POST",
        json_data=dict(WEBHOOK_JSON),
    )
    with prefect_api(settings):
        block_id = block.save(settings.prefect.notification_block, overwrite=True)
    return cast(UUID, block_id)


def _comparable(automation: AutomationCore) -> dict[str, Any]:
    dumped = automation.model_dump(
        mode="json", include={"description", "enabled", "tags", "trigger", "actions"}
    )
    # The trigger's event sets are dumped in set iteration order, which depends on insertion history:
    # sorted, a rule read back from the server compares equal to the same rule built here.
    trigger = dumped["trigger"]
    for key in ("after", "expect", "for_each"):
        if isinstance(trigger.get(key), list):
            trigger[key] = sorted(trigger[key])
    return dumped


def apply_automations(settings: Settings) -> dict[str, str]:
    """Create, update or leave alone each automation by name; a second run changes nothing.

    Returns:
        Automation name -> what happened ("created", "updated" or "unchanged").
    """
    block_id = ensure_notification_block(settings)
    wanted = [to_automation(notice, block_id) for notice in notices(settings)]
    wanted.append(zombie_automation(settings.zombie_after_s))
    wanted.extend(loop_guard_automations(settings, block_id))
    outcome: dict[str, str] = {}
    with prefect_api(settings), get_client(sync_client=True) as client:
        retrain = find_deployment(client, TRAIN_DEPLOYMENT)
        if retrain is not None:
            wanted.append(retrain_automation(retrain, settings))
            wanted.append(rerun_crashed_automation(retrain, settings))
        else:
            logger.warning("no %s deployment yet: the retrain automations wait for it", TRAIN_DEPLOYMENT)
        for automation in wanted:
            existing = client.read_automations_by_name(automation.name)
            if not existing:
                client.create_automation(automation)
                outcome[automation.name] = "created"
                continue
            keep, *duplicates = existing
            for duplicate in duplicates:  # left over from an interrupted run: one rule, one automation
                client.delete_automation(duplicate.id)
            if _comparable(keep) == _comparable(automation) and not duplicates:
                outcome[automation.name] = "unchanged"
            else:
                client.update_automation(keep.id, automation)
                outcome[automation.name] = "updated"
    for name, what in outcome.items():
        logger.info("automation %s: %s", name, what)
    return outcome
