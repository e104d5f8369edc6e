"""Slices of the gate's evaluation rows: a small rule language over a row's columns, and which rows match.

A slice is declared in settings (``PromotionSettings.slices``) with a name and a rule: a predicate over
the row's columns (``where``), optionally a traffic window (``window_days``). The predicate is one or
more comparisons joined by ``and``, each ``<column> <op> <value>`` with ``op`` one of ``< <= > >= ==
!=`` and ``value`` a number or a quoted word, e.g. ``tempo >= 120 and source == 'traffic'``. Parsed,
never evaluated as code. Columns: the seven features and the provenance the gate adds to each row
(see ``SLICE_COLUMNS``).

pandas is imported only where rows are matched: the settings (which parse the rules) load in the API.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from reggaeton.schema import FEATURE_NAMES, OBSERVED_AT, SOURCE

if TYPE_CHECKING:
    import pandas as pd

# Where an evaluation row comes from (its ``ORIGIN``), besides its ``SOURCE`` (base data or traffic).
ORIGIN: Final = "origin"
HOLDOUT: Final = "holdout"  # the challenger's held-out rows (its reference set)
CHAMPION_HOLDOUT: Final = "champion-holdout"  # the champion's held-out rows the challenger's lack
TRAFFIC: Final = "traffic"  # labelled traffic predicted after the challenger's training started
FRESH: Final = "fresh"  # a fresh sample of synthetic base data, drawn for the gate, never trained on
ORIGINS: Final = (HOLDOUT, CHAMPION_HOLDOUT, TRAFFIC, FRESH)
# The gate's overall rule judges these (today's pool); slices judge every row they match.
OVERALL_ORIGINS: Final = (HOLDOUT, TRAFFIC)
# 1 for a row of the champion's reference set (held out when it was trained), else 0.
CHAMPION_REFERENCE: Final = "champion_reference"

SLICE_COLUMNS: Final[tuple[str, ...]] = (*FEATURE_NAMES, SOURCE, ORIGIN, CHAMPION_REFERENCE)

_OPERATORS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_COMPARISON = re.compile(
    r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class RuleError(ValueError):
    """A slice rule that cannot be parsed or names an unknown column."""


@dataclass(frozen=True)
class Comparison:
    """One ``column op value`` term of a rule."""

    column: str
    op: str
    value: float | str

    def matches(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows of ``frame`` where the comparison holds (missing values never match)."""
        column = frame[self.column]
        if isinstance(self.value, str):
            values = column.astype("string").fillna("")
        else:
            values = column.astype("float64")
        result = _OPERATORS[self.op](values, self.value)
        return np.asarray(result.fillna(False) if hasattr(result, "fillna") else result, dtype=bool)

    def __str__(self) -> str:
        value = f"'{self.value}'" if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.column} {self.op} {value}"


def parse_rule(text: str) -> tuple[Comparison, ...]:
    """The comparisons of a rule (empty text: every row).

    Raises:
        RuleError: a term that is not ``column op value``, or a column not in ``SLICE_COLUMNS``.
    """
    if not text.strip():
        return ()
    terms = re.split(r"\s+and\s+", text.strip())
    comparisons = []
    for term in terms:
        found = _COMPARISON.match(term)
        if found is None:
            raise RuleError(
                f"cannot read {term.strip()!r}: write <column> <op> <value>, e.g. tempo >= 120 or "
                "source == 'traffic', joined by 'and'"
            )
        column, raw = found["column"], found["value"]
        if column not in SLICE_COLUMNS:
            raise RuleError(
                f"unknown column {column!r} in {term.strip()!r}; known: {', '.join(SLICE_COLUMNS)}"
            )
        value: float | str = raw[1:-1] if raw[0] in "'\"" else float(raw)
        comparisons.append(Comparison(column, found["op"], value))
    return tuple(comparisons)


def rule_text(where: str, window_days: float | None) -> str:
    """The rule as people read it: the predicate and the window."""
    parts = [" and ".join(str(c) for c in parse_rule(where))] if where.strip() else []
    if window_days is not None:
        parts.append(f"observed within {window_days:g} days of the newest row")
    return " and ".join(parts) or "every row"


def matching_rows(frame: pd.DataFrame, where: str, window_days: float | None = None) -> np.ndarray:
    """Which rows of an evaluation frame a slice holds (a boolean mask).

    Args:
        frame: Evaluation rows with the columns of ``SLICE_COLUMNS`` and ``OBSERVED_AT``.
        where: The slice's predicate (empty: every row).
        window_days: Only rows observed within this many days before the newest observed row of the
            frame (rows without a time never match). Relative to the data, not to the clock, so the
            same evaluation rows give the same slice whenever the gate runs.
    """
    import pandas as pd

    mask = np.ones(len(frame), dtype=bool)
    for comparison in parse_rule(where):
        mask &= comparison.matches(frame)
    if window_days is not None:
        observed = pd.to_datetime(frame[OBSERVED_AT], utc=True)
        newest = observed.max()
        if pd.isna(newest):
            return np.zeros(len(frame), dtype=bool)
        recent = observed >= newest - pd.Timedelta(days=window_days)
        mask &= recent.fillna(False).to_numpy(dtype=bool)
    return mask
