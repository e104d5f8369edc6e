"""How the suite is spread over pytest-xdist workers: units of work, longest first, one at a time.

A unit is a test module, or the modules that share one ``xdist_group`` (e.g. those on one session
stack). Units run on one worker each, so a stack a module starts is started once. Most of the suite's
time is waiting (servers, heartbeats, schedules), so the wall time is set by how the long units are
placed: the scheduler hands them out longest first (times measured by an earlier run, stored in
``durations.json`` with ``--store-durations``; estimated from the markers for a unit not measured yet),
and gives a worker its next unit only when it is about to run its last test, so a long unit never
waits behind another one queued on a busy worker.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from cpu_accounting import REPORT_ATTRIBUTE, RUSAGE_NOTE, SOURCE_ATTRIBUTE, containers_cpu_s

DURATIONS: Final = Path(__file__).with_name("durations.json")
GROUP_MARK: Final = "xdist_group"

# Seconds assumed for a test of a unit no run has measured yet (its markers say what it starts).
ESTIMATE_S: Final[Mapping[str, float]] = {"docker": 300.0, "slow": 60.0, "prefect": 15.0}
DEFAULT_ESTIMATE_S: Final = 1.0


def group_of(item: pytest.Item) -> str | None:
    """The ``xdist_group`` a test belongs to, if any."""
    mark = item.get_closest_marker(GROUP_MARK)
    if mark is None:
        return None
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def unit_of_item(item: pytest.Item) -> str:
    """The unit of a collected test: its group, else its module's path."""
    return group_of(item) or item.nodeid.split("::", 1)[0]


def unit_of_nodeid(nodeid: str, groups: Mapping[str, str] | None = None) -> str:
    """The unit of a node id: its group (from ``groups``, as collected), else its module's path."""
    return (groups or {}).get(nodeid) or nodeid.split("::", 1)[0]


# The controller only sees node ids, not markers (xdist 3.8's own loadgroup renames the ids of grouped
# tests, which pytest 9.2's node ids no longer allow: its groups silently stopped working). So each
# worker writes the groups it collected to a file the controller named in this variable.
GROUPS_ENV: Final = "REGGAETON_TEST_GROUPS"


def write_groups(items: Iterable[pytest.Item], path: Path) -> None:
    """Node id -> group of the grouped tests, written whole (a worker's file appears complete or not)."""
    groups = {item.nodeid: group for item in items if (group := group_of(item)) is not None}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(groups))
    partial.replace(path)


def read_groups(folder: Path) -> dict[str, str]:
    """The groups the workers wrote (every worker collects the same tests: any file will do)."""
    for path in sorted(folder.glob("groups-*.json")):
        return {str(key): str(value) for key, value in json.loads(path.read_text()).items()}
    return {}


def stored_durations(path: Path = DURATIONS) -> dict[str, float]:
    """Seconds per unit from an earlier run (empty when none was stored)."""
    try:
        return {str(key): float(value) for key, value in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def estimate(items: Iterable[pytest.Item]) -> float:
    """Seconds a unit's tests may take, from their markers."""
    total = 0.0
    for item in items:
        marked = [ESTIMATE_S[name] for name in ESTIMATE_S if item.get_closest_marker(name) is not None]
        total += max(marked, default=DEFAULT_ESTIMATE_S)
    return total


def longest_first(items: list[pytest.Item], durations: Mapping[str, float]) -> list[pytest.Item]:
    """The tests reordered unit by unit, the longest unit first; a unit's own order is kept."""
    units: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        units[unit_of_item(item)].append(item)
    weight = {unit: durations.get(unit, estimate(tests)) for unit, tests in units.items()}
    order = sorted(units, key=lambda unit: -weight[unit])  # stable: ties keep collection order
    return [item for unit in order for item in units[unit]]


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The xdist scheduler of ``--dist loadgroup`` runs: units in collection order, one at a time.

    ``GROUPS_ENV`` must name the folder the workers write their groups to (see ``write_groups``).
    """
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirst(LoadScopeScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once the workers have collected (schedule() runs then)
                self.groups = read_groups(Path(os.environ[GROUPS_ENV]))
            return unit_of_nodeid(nodeid, self.groups)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # A worker keeps its last test until it knows the next one (pytest tears fixtures down by
            # it), so one pending test is a worker about to be free: only then does it get a unit.
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    config.option.loadscopereorder = False  # keep the order longest_first gave the collection
    return LongestFirst(config, log)


class DurationRecorder:
    """A plugin of the controller process: each unit's setup, call and teardown seconds over a run."""

    def __init__(self, store: bool, groups_folder: Path | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        # CPU seconds of each unit's processes (tests/cpu_accounting.py), where the workers measured it.
        self.cpu_s: dict[str, float] = defaultdict(float)
        self.by_rusage = False  # some worker could not count in a cgroup of its own
        self._store = store
        self._folder = groups_folder
        self._groups: dict[str, str] | None = None
        self._containers_at_start = containers_cpu_s()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._groups is None:  # the first report comes after collection: the groups are written
            self._groups = read_groups(self._folder) if self._folder is not None else {}
        unit = unit_of_nodeid(report.nodeid, self._groups)
        self.seconds[unit] += report.duration
        cpu_s = getattr(report, REPORT_ATTRIBUTE, None)
        if cpu_s is not None:
            self.cpu_s[unit] += float(cpu_s)
            self.by_rusage |= getattr(report, SOURCE_ATTRIBUTE, "") == "rusage"

    def lines(self, top: int = 15) -> list[str]:
        """The report: the longest units with their CPU seconds, then the units that used the most CPU."""

        def line(unit: str) -> str:
            cpu = f"{self.cpu_s[unit]:8.1f} cpu-s" if unit in self.cpu_s else " " * 14
            return f"{self.seconds[unit]:8.1f}s {cpu}  {unit}"

        lines = [line(unit) for unit in sorted(self.seconds, key=lambda u: -self.seconds[u])[:top]]
        if self.cpu_s:
            how = f"; {RUSAGE_NOTE}" if self.by_rusage else ""
            lines.append(f"most CPU (all units: {sum(self.cpu_s.values()):.0f} cpu-s{how}):")
            lines += [line(unit) for unit in sorted(self.cpu_s, key=lambda u: -self.cpu_s[u])[:top]]
        containers = containers_cpu_s()
        start = self._containers_at_start
        if containers is not None and start is not None and (used := containers - start) >= 1:
            lines.append(f"Docker containers (the compose stack, Postgres): {used:.0f} cpu-s")
        return lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.seconds:
            return
        terminalreporter.section("slowest units (module or xdist group: setup + calls + teardown)")
        for line in self.lines():
            terminalreporter.write_line(line)
        if self._store:
            self.store()
            terminalreporter.write_line(f"stored in {DURATIONS}")

    def store(self, path: Path = DURATIONS) -> None:
        """Merge this run's units into the stored times (units not run this time keep theirs)."""
        merged = {**stored_durations(path), **{unit: round(s, 1) for unit, s in self.seconds.items()}}
        ordered = dict(sorted(merged.items(), key=lambda item: -item[1]))
        path.write_text(json.dumps(ordered, indent=1) + "\n")
