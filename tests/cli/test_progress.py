"""Live progress of a flow run (what `reggaeton monitor` prints), read from a real Prefect server."""

from __future__ import annotations

import io
import re

from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client

from cli.progress import RunProgress
from flows.outcome import log_outcome
from reggaeton import names
from reggaeton.settings import Settings


@task
def step() -> int:
    return 1


@flow(name="progress-probe")
def probe() -> int:
    get_run_logger().getChild(names.PROGRESS_LOG).info("chunk 1/1 window: 10 rows")
    get_run_logger().info("a line of the flow's own log, not progress")
    return step()


class Terminal(io.StringIO):
    """Output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_runs_states_tasks_and_progress_lines_show_plain_off_a_terminal(
    prefect_api_url: str, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={"prefect": settings.prefect.model_copy(update={"api_url": prefect_api_url})}
    )
    flow_run_id = probe(return_state=True).state_details.flow_run_id
    assert flow_run_id is not None
    outputs = {"pipe": io.StringIO(), "terminal": Terminal()}
    for out in outputs.values():
        progress = RunProgress(out)
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            progress(client, run)
        progress.drain(settings, run)

    plain = outputs["pipe"].getvalue()
    assert "\r" not in plain and "\033[" not in plain, plain
    lines = _without_elapsed(plain.splitlines())
    assert f"flow run {run.name}: Completed" in lines, plain
    assert any(re.fullmatch(r"task step-\w+: Completed in [\d.]+ s", line) for line in lines), plain
    assert lines.count("  chunk 1/1 window: 10 rows") == 1, plain
    assert "own log" not in plain
    # On a terminal: the same lines, and a last line rewritten in place, cleared at the end.
    live = outputs["terminal"].getvalue()
    assert "\r\033[K" in live and f"  ... {run.name} Completed" in live and live.endswith("\r\033[K"), live
    shown = [line for line in live.replace("\r\033[K", "\n").splitlines() if line.startswith("[")]
    assert sorted(_without_elapsed(shown)) == sorted(lines)  # a log line may come with a later poll


def _without_elapsed(lines: list[str]) -> list[str]:
    return [re.sub(r"^\[ *[\d.]+ s\] ", "", line) for line in lines]


def test_a_finished_tasks_time_comes_from_its_states_when_its_record_lacks_it(
    prefect_api_url: str, settings: Settings
) -> None:
    """Task runs are recorded from events: a poll may see the final state before the run time."""
    from datetime import timedelta

    from adapters import prefect_api
    from cli.progress import _run_time

    flow_run_id = probe(return_state=True).state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        (task_run,) = prefect_api.task_runs_of(client, flow_run_id)
        as_first_read = task_run.model_copy(
            update={"total_run_time": timedelta(0), "start_time": None, "end_time": None}
        )
        took = _run_time(client, as_first_read)
    assert took is not None and timedelta(0) <= took < timedelta(seconds=30), took


@flow(name="outcome-probe")
def outcome_probe() -> list[str]:
    lines = ["gate: version 2 rejected (no gain)", "per slice:", "  base-data  120", "champion: version 1"]
    log_outcome(lines)
    return lines


def test_a_runs_outcome_lines_are_kept_in_order_for_the_end_not_shown_as_they_come(
    prefect_api_url: str, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={"prefect": settings.prefect.model_copy(update={"api_url": prefect_api_url})}
    )
    state = outcome_probe(return_state=True)
    out = io.StringIO()
    progress = RunProgress(out)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    progress.drain(settings, run, outcome=True)
    assert progress.outcome == state.result()
    assert "version" not in out.getvalue()
