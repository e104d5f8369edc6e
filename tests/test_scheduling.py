"""How the suite is spread over xdist workers: units, their order, and the stored times."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
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
