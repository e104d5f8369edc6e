"""How the suite is spread over xdist workers: units, their order, and the stored times."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cpu_accounting import CGROUP_V1, PARENT, REPORT_ATTRIBUTE, RUSAGE_NOTE, SOURCE_ATTRIBUTE
from scheduling import (
    DurationRecorder,
    longest_first,
    read_groups,
    stored_durations,
    unit_of_nodeid,
    write_groups,
)


@dataclass
class Mark:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeItem:
    """What the scheduling functions read of a collected test: its id and its markers."""

    nodeid: str
    marks: dict[str, Mark] = field(default_factory=dict)

    def get_closest_marker(self, name: str) -> Mark | None:
        return self.marks.get(name)


def test_a_unit_is_the_group_its_worker_collected_else_the_module(tmp_path: Path) -> None:
    grouped: list[Any] = [
        FakeItem("tests/a/test_x.py::test_one", {"xdist_group": Mark(("loop_stack",))}),
        FakeItem("tests/a/test_y.py::test_two", {"xdist_group": Mark(kwargs={"name": "loop_stack"})}),
        FakeItem("tests/a/test_z.py::Case::test_three"),
    ]
    write_groups(grouped, tmp_path / "groups-gw1.json")
    groups = read_groups(tmp_path)
    assert [unit_of_nodeid(item.nodeid, groups) for item in grouped] == [
        "loop_stack",
        "loop_stack",
        "tests/a/test_z.py",
    ]
    assert read_groups(tmp_path / "none") == {}


def test_units_run_longest_first_and_keep_their_own_order() -> None:
    slow = {"slow": Mark()}
    group = {"xdist_group": Mark(("stack",))}
    items: list[Any] = [
        FakeItem("tests/test_units.py::test_a"),
        FakeItem("tests/test_units.py::test_b"),
        FakeItem("tests/test_e2e.py::test_loop", {**slow, **group}),
        FakeItem("tests/test_measured.py::test_x"),
        FakeItem("tests/test_commands.py::test_docs", {**slow, **group}),
        FakeItem("tests/test_guard.py::test_one", slow),
    ]
    ordered = longest_first(items, {"tests/test_measured.py": 500.0})
    assert [item.nodeid for item in ordered] == [
        "tests/test_measured.py::test_x",  # measured: 500 s
        "tests/test_e2e.py::test_loop",  # the group's two slow tests: estimated 120 s
        "tests/test_commands.py::test_docs",
        "tests/test_guard.py::test_one",  # one slow test: 60 s
        "tests/test_units.py::test_a",  # unmarked: 1 s a test
        "tests/test_units.py::test_b",
    ]


def test_stored_times_merge_with_the_units_of_this_run(tmp_path: Path) -> None:
    path = tmp_path / "durations.json"
    assert stored_durations(path) == {}
    path.write_text('{"tests/old.py": 12.0, "tests/a.py": 1.0}')
    (tmp_path / "groups-gw0.json").write_text('{"tests/b.py::t": "g"}')
    recorder = DurationRecorder(store=True, groups_folder=tmp_path)
    for nodeid, seconds in (("tests/a.py::t1", 2.0), ("tests/a.py::t2", 3.0), ("tests/b.py::t", 4.5)):
        recorder.pytest_runtest_logreport(
            pytest.TestReport(nodeid, (), {}, "passed", None, "call", duration=seconds)
        )  # type: ignore[arg-type]
    recorder.store(path)
    assert stored_durations(path) == {"tests/old.py": 12.0, "tests/a.py": 5.0, "g": 4.5}


def test_a_test_that_needs_the_images_waits_for_their_background_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from images_ready import READY_ENV, wait_for_images

    monkeypatch.delenv(READY_ENV, raising=False)
    wait_for_images(timeout_s=0)  # not under CI's background build: nothing to wait for
    marker = tmp_path / "images-ready"
    monkeypatch.setenv(READY_ENV, str(marker))
    with pytest.raises(pytest.fail.Exception, match="not built within 0 s"):
        wait_for_images(timeout_s=0)
    marker.write_text("3\n")
    with pytest.raises(pytest.fail.Exception, match=r"failed \(exit 3\)"):
        wait_for_images(timeout_s=0)
    marker.write_text("0\n")
    wait_for_images(timeout_s=0)


def test_the_report_gives_each_unit_its_cpu_seconds_and_ranks_them(tmp_path: Path) -> None:
    recorder = DurationRecorder(store=False, groups_folder=tmp_path)
    phases = (("tests/a.py::t1", 10.0, 1.0), ("tests/a.py::t2", 5.0, 2.0), ("tests/b.py::t", 4.0, 7.5))
    for nodeid, seconds, cpu_s in phases:
        report = pytest.TestReport(nodeid, (), {}, "passed", None, "call", duration=seconds)
        setattr(report, REPORT_ATTRIBUTE, cpu_s)
        recorder.pytest_runtest_logreport(report)
    assert recorder.cpu_s == {"tests/a.py": 3.0, "tests/b.py": 7.5}
    lines = recorder.lines()
    assert lines[:2] == ["    15.0s      3.0 cpu-s  tests/a.py", "     4.0s      7.5 cpu-s  tests/b.py"]
    assert lines[2:5] == [
        "most CPU (all units: 10 cpu-s):",
        "     4.0s      7.5 cpu-s  tests/b.py",
        "    15.0s      3.0 cpu-s  tests/a.py",
    ]


def test_the_report_says_when_a_worker_counted_without_a_cgroup(tmp_path: Path) -> None:
    recorder = DurationRecorder(store=False, groups_folder=tmp_path)
    report = pytest.TestReport("tests/a.py::t", (), {}, "passed", None, "call", duration=1.0)
    setattr(report, REPORT_ATTRIBUTE, 0.5)
    setattr(report, SOURCE_ATTRIBUTE, "rusage")
    recorder.pytest_runtest_logreport(report)
    assert f"(all units: 0 cpu-s; {RUSAGE_NOTE})" in recorder.lines()[1]


ORPHAN_BURNS_CPU = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from cpu_accounting import join_own_cgroup, rusage_cpu_s
from process_support import running
joined = join_own_cgroup(f"test-{os.getpid()}")
if joined is None:
    print("none 0 0"); sys.exit(0)
read, folder = joined
before = read()
out, into = os.pipe()
if os.fork() == 0:  # a daemon's way: its parent exits, init adopts the worker, nobody here reaps it
    if os.fork() == 0:
        os.write(into, str(os.getpid()).encode() + b"\\n")
        end = time.process_time() + 1.0
        while time.process_time() < end:
            pass
    os._exit(0)
os.wait()
orphan = os.read(out, 64).decode().strip()
deadline = time.monotonic() + 120
while running(int(orphan)) and time.monotonic() < deadline:  # until it has burnt its second and exited
    time.sleep(0.1)
print("cgroup", read() - before, rusage_cpu_s())
(folder.parents[1] / "cgroup.procs").write_text(str(os.getpid()))
for _ in range(600):  # the orphan's zombie holds the folder until init reaps it
    try:
        folder.rmdir()
        break
    except OSError:
        time.sleep(0.1)
"""


def test_a_workers_cgroup_counts_the_cpu_of_a_process_it_started_and_nobody_reaped() -> None:
    """What `getrusage` misses (a stack's daemonized services, their flow runs): the cgroup counts it.
    And the empty folder an earlier worker left (its last process ended after it) is swept."""
    v1 = (CGROUP_V1 / "cpuacct.usage").is_file()  # elsewhere a folder made there would be a cgroup v2
    leftover = CGROUP_V1 / PARENT / f"leftover-{os.getpid()}"
    if v1:
        with contextlib.suppress(OSError):
            leftover.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN_BURNS_CPU, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    source, counted, rusage = done.stdout.split()
    if source == "none":
        # Where a cgroup v1 cpuacct hierarchy of its own exists (this CI machine's), a root run must use it.
        if v1 and not (CGROUP_V1 / "cpu.shares").exists() and os.geteuid() == 0:
            pytest.fail("running as root beside an accounting-only cpuacct hierarchy, no cgroup was joined")
        pytest.skip("no cgroup that only counts is writable here: the report counts the workers' own CPU")
    assert float(counted) >= 0.9, done.stdout  # the orphan's second
    assert float(rusage) < 0.5, done.stdout  # which the process's own accounting does not see
    if v1:
        assert not leftover.exists()
