"""The progress of `reggaeton score`: rows, rows/s and ETA, redrawn on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from cli.score_progress import ScoreProgress
from reggaeton.batch import Progress


class Terminal(io.StringIO):
    """Output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _steps(progress: ScoreProgress, clock: Clock) -> None:
    for second, rows in ((1.0, 100_000), (1.1, 200_000), (6.5, 300_000), (7.0, 400_000)):
        clock.now = 100.0 + second
        progress(Progress(rows, 1_000_000, second, rows))


def test_off_a_terminal_a_line_every_few_seconds_in_the_house_style() -> None:
    out, clock = io.StringIO(), Clock()
    progress = ScoreProgress(out, every_s=5.0, clock=clock)
    _steps(progress, clock)
    progress.close()
    assert out.getvalue().splitlines() == [
        "[   1.0 s] 100,000 of ~1,000,000 rows (10 %), 100,000 rows/s, ETA 9 s",
        "[   6.5 s] 300,000 of ~1,000,000 rows (30 %), 46,154 rows/s, ETA 15 s",
    ]


def test_on_a_terminal_one_line_redrawn_and_ended_by_close() -> None:
    out, clock = Terminal(), Clock()
    progress = ScoreProgress(out, every_s=5.0, clock=clock)
    _steps(progress, clock)
    progress.close()
    text = out.getvalue()
    assert text.count("\r\033[K") == 3  # 1.1 s is within the redraw interval of 1.0 s
    assert text.endswith("[   7.0 s] 400,000 of ~1,000,000 rows (40 %), 57,143 rows/s, ETA 10 s\n")
    assert text.count("\n") == 1
