"""CPU seconds per test, so the slowest-units report can say which units the machine's cores went to.

On two cores the suite is CPU-bound (no idle CPU while it runs): its wall time follows the CPU its units
use, their own and that of every server, command and flow run they start, more than their waits. A
worker's own ``getrusage`` misses most of that (a stack's services are reaped late, or by init), so each
pytest-xdist worker puts itself in a cgroup of its own where it can: every process it starts, daemonized
or not, is counted in it at once. Elsewhere the count is the worker and its reaped children (the report
says so). Docker's containers have their cgroups: ``containers_cpu_s`` reads their parent's total.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Final

import pytest

CGROUP_V1: Final = Path("/sys/fs/cgroup/cpuacct")  # cpuacct.usage: nanoseconds
CGROUP_V2: Final = Path("/sys/fs/cgroup")  # cpu.stat: usage_usec, where cgroup.controllers exists
DOCKER_V1: Final = CGROUP_V1 / "docker" / "cpuacct.usage"
PARENT: Final = "reggaeton-tests"
REPORT_ATTRIBUTE: Final = "cpu_s"  # on each phase's report: survives xdist's serialization
SOURCE_ATTRIBUTE: Final = "cpu_source"  # "rusage" on the reports of a worker without a cgroup
RUSAGE_NOTE: Final = "the workers' own and reaped CPU only: no writable cgroup here"


def rusage_cpu_s() -> float:
    """CPU seconds of this process and its children that were waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _v2_usage_s(folder: Path) -> float:
    for line in (folder / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise OSError(f"no usage_usec in {folder / 'cpu.stat'}")


def join_own_cgroup(name: str) -> tuple[Callable[[], float], Path] | None:
    """Move this process into a new cgroup ``reggaeton-tests/<name>`` (the processes it starts follow it):
    (a reader of its CPU seconds, its folder), or None where cgroups cannot be written (not root, read-only,
    no cpu accounting) or where joining one would change how the CPU is shared (``_accounting_only``)."""
    hierarchies: tuple[tuple[Path, str, Callable[[Path], float]], ...] = (
        (CGROUP_V1, "cpuacct.usage", lambda folder: int((folder / "cpuacct.usage").read_text()) / 1e9),
        (CGROUP_V2, "cgroup.controllers", _v2_usage_s),
    )
    for root, marker, reader in hierarchies:
        if not (root / marker).is_file():  # not that hierarchy: a folder made there would be a cgroup
            continue
        if not _accounting_only(root):
            continue
        folder = root / PARENT / name
        _remove_empty(root / PARENT)
        for _ in range(3):  # another run's sweep may remove the folder before this process is in it
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "cgroup.procs").write_text(str(os.getpid()))
                reader(folder)
            except OSError:
                continue
            return (lambda folder=folder, reader=reader: reader(folder)), folder
    return None


def _accounting_only(root: Path) -> bool:
    """Whether a new cgroup under ``root`` only counts: no CPU controller there, whose weights would give
    the worker and everything it starts one share of the machine between them (cgroup v1 often mounts cpu
    with cpuacct; v2 applies cpu weights to the children of a cgroup that enables the cpu controller)."""
    if root == CGROUP_V1:
        return not (root / "cpu.shares").exists()
    try:
        return "cpu" not in (root / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def _remove_empty(parent: Path) -> None:
    """The folders of earlier workers whose last processes have ended (a cgroup with a process in it, or
    one with child cgroups, cannot be removed: rmdir fails and it stays)."""
    for child in parent.iterdir() if parent.is_dir() else ():
        if child.is_dir():
            with contextlib.suppress(OSError):
                child.rmdir()


def leave_cgroup(folder: Path) -> None:
    """Back to the root cgroup; the folder is removed once no process is left in it."""
    try:
        (folder.parents[1] / "cgroup.procs").write_text(str(os.getpid()))
        folder.rmdir()
    except OSError:
        pass  # a process it started still runs: the next run's workers remove the folder once it is empty


def containers_cpu_s() -> float | None:
    """CPU seconds Docker's running and stopped containers used so far (cgroup v1), or None."""
    try:
        return int(DOCKER_V1.read_text()) / 1e9
    except (OSError, ValueError):
        return None


class CpuMeter:
    """A plugin of each worker: every setup, call and teardown report carries the CPU seconds used since
    the previous one, by the worker and everything it started."""

    def __init__(self, name: str) -> None:
        joined = join_own_cgroup(name)
        self._read: Callable[[], float] = joined[0] if joined else rusage_cpu_s
        self._folder: Path | None = joined[1] if joined else None
        self._last = self._read()

    def lap(self) -> float:
        now = self._read()
        used, self._last = now - self._last, now
        return max(used, 0.0)

    def pytest_collection_finish(self) -> None:
        self.lap()  # collecting (imports) is nobody's test

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        setattr(report, REPORT_ATTRIBUTE, self.lap())
        if self._folder is None:  # no cgroup: the worker's own and reaped CPU
            setattr(report, SOURCE_ATTRIBUTE, "rusage")
        return report

    def pytest_unconfigure(self) -> None:
        if self._folder is not None:
            leave_cgroup(self._folder)
