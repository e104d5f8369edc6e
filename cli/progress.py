"""Live progress of a flow run on the terminal, polled from the Prefect API while a command waits on it.

Each poll shows what changed since the last one, one line each, oldest first: the flow run's state, each
task run as it starts and ends (with its duration), and the lines the flow logs on its progress logger
(``names.PROGRESS_LOG``: the monitor's chunk windows). On a terminal a last line, rewritten in place, says
what is running and for how long; elsewhere (a pipe, CI logs) only the plain lines are written. The lines
the flow logs on its outcome logger (``names.OUTCOME_LOG``) are not shown as they come: they are kept, in
order, for the command to print once the run is done (``RunProgress.outcome``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TextIO
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.settings import get_current_settings

from adapters import prefect_api
from reggaeton import names
from reggaeton.settings import Settings

# A line to show and when it happened (ISO text, so lines of one poll sort by time).
Event = tuple[str, str]

# After the run's final state, how long at most to wait for its last log lines, and how often to ask.
DRAIN_S = 10.0
DRAIN_POLL_S = 0.5


def _run_time(client: SyncPrefectClient, task: TaskRun) -> timedelta | None:
    """How long a finished task ran: its run time, else from its states' timestamps (None: never ran).

    Task runs reach the server as events, recorded apart from each other: a poll can read the final
    state before the record has its run time or start time. The states themselves are there.
    """
    if task.total_run_time:
        return task.total_run_time
    if task.start_time is not None and task.end_time is not None:
        return task.end_time - task.start_time
    states = client.read_task_run_states(task.id)
    started = [state.timestamp for state in states if state.is_running()]
    ended = [state.timestamp for state in states if state.is_final()]
    return max(ended) - min(started) if started and ended else None


class RunProgress:
    """A poll callback (``embedded.manual.Watch``) printing a flow run's progress as it happens."""

    def __init__(self, out: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out or sys.stdout
        self._live = self._out.isatty()
        self._clock = clock
        self._began = clock()
        self._state: dict[UUID, str] = {}  # flow or task run id -> the state last shown
        self._logs_since: dict[UUID, datetime] = {}
        self._logs_seen: set[UUID] = set()
        self._running = ""
        self.outcome: list[str] = []  # the run's outcome lines, oldest first

    def __call__(self, client: SyncPrefectClient, run: FlowRun) -> None:
        """Show what changed in ``run`` since the last poll."""
        events = self._flow_events(run)
        tasks = prefect_api.task_runs_of(client, run.id)
        for task in tasks:
            events += self._task_events(client, task)
        events += self._new_logs(client, run.id)
        running = [task.name for task in tasks if task.state is not None and task.state.is_running()]
        self._running = f"{run.name} {run.state_name or 'unknown'}" + (
            f": {', '.join(running)}" if running else ""
        )
        self._write(line for _, line in sorted(events, key=lambda event: event[0]))

    def drain(self, settings: Settings, run: FlowRun, outcome: bool = False) -> None:
        """After the final state: the log lines still on their way, waited for at most ``DRAIN_S``.

        A flow's log handler sends its lines in batches, one every ``logging.to_api.batch_interval``
        seconds (Prefect's setting, 2 s by default; read here as the flow's process has it unless
        configured apart): the drain ends once a whole interval and a poll have brought nothing new,
        and, with ``outcome``, once the outcome lines have come (the run logs them last).
        """
        quiet_s = get_current_settings().logging.to_api.batch_interval + DRAIN_POLL_S
        deadline = self._clock() + DRAIN_S
        last_line = self._clock()
        while self._clock() < deadline and (
            self._clock() - last_line < quiet_s or (outcome and not self.outcome)
        ):
            known = len(self.outcome)
            with prefect_api.prefect_api(settings), get_client(sync_client=True) as client:
                lines = self._new_logs(client, run.id)
            self._write(line for _, line in lines)
            if lines or len(self.outcome) > known:
                last_line = self._clock()
            time.sleep(DRAIN_POLL_S)
        self._clear()

    # --- what changed ---------------------------------------------------------------------------------
    def _flow_events(self, run: FlowRun) -> list[Event]:
        name = run.state_name or "unknown"
        if self._state.get(run.id) == name:
            return []
        self._state[run.id] = name
        return [(str(run.state.timestamp if run.state else ""), f"flow run {run.name}: {name}")]

    def _task_events(self, client: SyncPrefectClient, task: TaskRun) -> list[Event]:
        state = task.state
        name = task.state_name or "unknown"
        if self._state.get(task.id) == name:
            return []
        self._state[task.id] = name
        if state is not None and state.is_final():
            took = _run_time(client, task)
            shown = f" in {took.total_seconds():.1f} s" if took is not None else ""
            return [(str(task.end_time or state.timestamp), f"task {task.name}: {name}{shown}")]
        return [(str(task.start_time or (state.timestamp if state else "")), f"task {task.name}: {name}")]

    def _new_logs(self, client: SyncPrefectClient, run_id: UUID) -> list[Event]:
        events = []
        for log in prefect_api.logs_of(client, run_id, self._logs_since.get(run_id)):
            self._logs_since[run_id] = log.timestamp
            if log.id in self._logs_seen:
                continue
            if log.name.endswith(f".{names.OUTCOME_LOG}"):
                self._logs_seen.add(log.id)
                self.outcome += log.message.splitlines()  # one record per run (flows.outcome)
            elif log.name.endswith(f".{names.PROGRESS_LOG}"):
                self._logs_seen.add(log.id)
                events.append((str(log.timestamp), f"  {log.message}"))
        return events

    # --- the terminal ---------------------------------------------------------------------------------
    def _write(self, lines: Iterable[str]) -> None:
        elapsed = self._clock() - self._began
        self._clear()
        for line in lines:
            self._out.write(f"[{elapsed:6.1f} s] {line}\n")
        if self._live:
            self._out.write(f"  ... {self._running}, {elapsed:.0f} s")
        self._out.flush()

    def _clear(self) -> None:
        if self._live:
            self._out.write("\r\033[K")
            self._out.flush()
