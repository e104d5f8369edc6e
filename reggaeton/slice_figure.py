"""The gate's slices as a picture: both models' PR-AUC per slice, and the paired difference with its interval.

Plain matplotlib on a ``Figure`` (no pyplot state), from ``Decision.to_dict()["slices"]`` so it can be
drawn again from a recorded decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_VERDICT_COLOURS = {"held": "tab:green", "worse": "tab:red"}
_NOT_JUDGED = "tab:gray"


def slices_figure(
    slices: Sequence[Mapping[str, Any]], champion_version: str | None, challenger_version: str
) -> Figure:
    """Left: each slice's PR-AUC, champion and challenger. Right: challenger minus champion, its
    (adjusted) interval, zero and the slice's allowed regression; red where a slice blocks."""
    from matplotlib.figure import Figure  # imported when drawn: ~0.4 s of CPU at every start otherwise

    count = max(1, len(slices))
    figure = Figure(figsize=(11, 1.2 + 0.55 * count), layout="constrained")
    scores, differences = figure.subplots(1, 2, sharey=True, width_ratios=(1, 1.3))
    positions = list(range(len(slices)))[::-1]  # the first slice on top
    labels = [f"{result['name']}\n{result['positives']} pos / {result['rows']} rows" for result in slices]
    for y, result in zip(positions, slices, strict=True):
        for key, marker, colour, label in (
            ("champion_pr_auc", "o", "tab:gray", f"champion (version {champion_version})"),
            ("challenger_pr_auc", "D", "tab:blue", f"challenger (version {challenger_version})"),
        ):
            value = result.get(key)
            if value is not None:
                scores.plot([value], [y], marker=marker, color=colour, linestyle="none", label=label)
        colour = _VERDICT_COLOURS.get(str(result.get("verdict")), _NOT_JUDGED)
        difference = result.get("pr_auc_difference")
        if isinstance(difference, Mapping):
            estimate = float(difference["estimate"])
            error = [[estimate - float(difference["low"])], [float(difference["high"]) - estimate]]
            differences.errorbar([estimate], [y], xerr=error, fmt="o", color=colour, capsize=4)
        else:
            differences.text(0.005, y, str(result.get("verdict")), color=_NOT_JUDGED, ha="left", va="center")
        allowed = -float(result["allowed_regression"])
        differences.plot([allowed, allowed], [y - 0.35, y + 0.35], color="tab:red", linestyle=":")
    scores.set_yticks(positions, labels)
    scores.set(xlim=(0, 1.02), xlabel="PR-AUC on the slice's rows", title="Both models, same rows")
    handles, names = scores.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=False))
    scores.legend(
        unique.values(), unique.keys(), loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=8
    )
    differences.axvline(0, color="black", linewidth=0.8)
    confidences = [float(r["confidence"]) for r in slices if r.get("confidence") is not None]
    level = f"{max(confidences):.1%} " if confidences else ""
    differences.set(
        xlabel=f"challenger minus champion, {level}paired interval\n(dotted: the slice's allowed regression)",
        title="PR-AUC difference per slice (red: blocks)",
    )
    return figure
