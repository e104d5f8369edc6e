"""A batch scoring's progress on the terminal, in the house style of ``cli/progress.py`` (which shows a
flow run's, and imports Prefect: this one does not, so `reggaeton score` starts without it)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from reggaeton.batch import Progress


class ScoreProgress:
    """A batch scoring's progress (rows, rows/s, ETA), as ``[elapsed s] line`` like a flow run's.

    On a terminal the line is redrawn in place as chunks finish; elsewhere (a pipe, CI logs) a line is
    written every ``every_s`` seconds. :meth:`close` ends the redrawn line.
    """

    REDRAW_S = 0.2  # at most five redraws a second

    def __init__(
        self, out: TextIO | None = None, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._out = out or sys.stdout
        self._live = self._out.isatty()
        self._every_s = every_s
        self._clock = clock
        self._began = clock()
        self._shown = -float("inf")
        self._drawn = False

    def __call__(self, progress: Progress) -> None:
        """Show how far the run is (skipped when the last line is too recent)."""
        now = self._clock()
        if now - self._shown < (self.REDRAW_S if self._live else self._every_s):
            return
        self._shown = now
        line = f"[{now - self._began:6.1f} s] {progress.line()}"
        if self._live:
            self._out.write(f"\r\033[K{line}")
            self._drawn = True
        else:
            self._out.write(line + "\n")
        self._out.flush()

    def close(self) -> None:
        """End the redrawn line (on a terminal), so what follows starts on a line of its own."""
        if self._drawn:
            self._out.write("\n")
            self._out.flush()
            self._drawn = False
