"""The gate's slices: each judged on its own rows, too small ones reported and never blocking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reggaeton.promotion import (
    HELD,
    NOT_COMPARED,
    PROMOTED,
    REJECTED,
    TOO_SMALL,
    WORSE,
    Decision,
    ModelScores,
    SliceResult,
    SliceRows,
    decide,
    markdown_report,
    slice_lines,
)
from reggaeton.settings import PromotionSettings
from reggaeton.slice_figure import slices_figure

POLICY = PromotionSettings(bootstrap_rounds=300, slice_bootstrap_rounds=500)
# Three parts of the evaluation rows: "new" songs where the challenger learnt something, "old" songs it
# may have forgotten, and a "rare" part with only a handful of positives.
NEW, OLD, RARE = 1000, 1000, 300
PREVALENCE = 0.08


@pytest.fixture(scope="module")
def parts() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y_new = (rng.random(NEW) < PREVALENCE).astype(int)
    y_old = (rng.random(OLD) < PREVALENCE).astype(int)
    y_rare = np.zeros(RARE, dtype=int)
    y_rare[:6] = 1
    return {"new": y_new, "old": y_old, "rare": y_rare}


def _proba(y_true: np.ndarray, separation: float, seed: int) -> np.ndarray:
    """Probabilities whose ranking quality grows with ``separation``."""
    rng = np.random.default_rng(seed)
    logit = separation * (y_true - 0.5) + rng.normal(size=len(y_true)) - 2.5
    return 1 / (1 + np.exp(-logit))


def _models(
    parts: dict[str, np.ndarray], champion: dict[str, float], challenger: dict[str, float]
) -> tuple[ModelScores, ModelScores, list[SliceRows]]:
    """Both models' scores over the three parts, given each one's separation per part, and the slices."""
    y_true = np.concatenate([parts[name] for name in ("new", "old", "rare")])
    probas = []
    for seed, separations in ((1, champion), (2, challenger)):
        probas.append(
            np.concatenate(
                [
                    _proba(parts[name], separations[name], seed + i)
                    for i, name in enumerate(("new", "old", "rare"))
                ]
            )
        )
    sizes = {"new": NEW, "old": OLD, "rare": RARE}
    slices, start = [], 0
    for name in ("new", "old", "rare"):
        mask = np.zeros(len(y_true), dtype=bool)
        mask[start : start + sizes[name]] = True
        start += sizes[name]
        slices.append(SliceRows(name, f"part == '{name}'", mask, min_positives=20, allowed_regression=0.02))
    scores = [
        ModelScores(version=v, evaluation="data-1", y_true=y_true, proba=p, latency_ms=0.3)
        for v, p in zip(("1", "2"), probas, strict=True)
    ]
    return scores[0], scores[1], slices


def _by_name(decision: Decision) -> dict[str, SliceResult]:
    return {result.name: result for result in decision.slices}


def test_better_overall_but_worse_on_one_slice_is_rejected_naming_it(parts: dict[str, np.ndarray]) -> None:
    # Far better on the new songs (most of the pooled gain), clearly worse on the old ones.
    champion, challenger, slices = _models(
        parts,
        champion={"new": 0.5, "old": 4.0, "rare": 3.0},
        challenger={"new": 6.0, "old": 1.5, "rare": 3.0},
    )
    overall = decide(champion, challenger, POLICY)
    assert overall.outcome == PROMOTED  # the pooled rows alone would promote it

    decision = decide(champion, challenger, POLICY, slices=slices)

    assert decision.outcome == REJECTED
    results = _by_name(decision)
    assert results["old"].verdict == WORSE and results["old"].blocks
    assert results["new"].verdict == HELD
    assert [result.name for result in decision.blocking_slices] == ["old"]
    assert decision.reason.startswith("slice 'old' (part == 'old') is worse than its allowed -0.02")
    old = results["old"]
    assert old.pr_auc_difference.high < -0.02
    # Bonferroni over the two judged slices ("rare" is too small): 1 - 0.05 / 2.
    assert old.confidence == pytest.approx(0.975)
    check = {c.name: c for c in decision.checks}["slice:old"]
    assert not check.passed and check.limit == -0.02


def test_worse_on_a_slice_too_small_to_judge_does_not_block_and_says_so(parts: dict[str, np.ndarray]) -> None:
    # Better on the new and the old songs, much worse on the 6 positives of the rare part.
    champion, challenger, slices = _models(
        parts,
        champion={"new": 1.0, "old": 2.0, "rare": 6.0},
        challenger={"new": 5.0, "old": 3.0, "rare": 0.0},
    )

    decision = decide(champion, challenger, POLICY, slices=slices)

    assert decision.outcome == PROMOTED
    rare = _by_name(decision)["rare"]
    assert rare.verdict == TOO_SMALL and not rare.blocks
    assert rare.pr_auc_difference is None
    assert rare.challenger_pr_auc < rare.champion_pr_auc  # reported...
    assert "6 positives of 300 rows, fewer than the 20 declared" in rare.detail
    # ...never counted as held, nor as a check that passed.
    assert "slice:rare" not in {c.name for c in decision.checks}
    report = markdown_report(decision)
    assert "| rare | part == 'rare' | 300 | 6 (20) |" in report and "too small to judge" in report
    assert any(
        line.startswith("rare") and line.endswith("too small to judge")
        for line in slice_lines(json.loads(json.dumps(decision.to_dict()))["slices"])
    )


def test_better_on_every_slice_is_promoted(parts: dict[str, np.ndarray]) -> None:
    champion, challenger, slices = _models(
        parts,
        champion={"new": 1.0, "old": 2.0, "rare": 2.0},
        challenger={"new": 4.0, "old": 4.0, "rare": 4.0},
    )
    slices[2] = SliceRows("rare", "part == 'rare'", slices[2].rows, min_positives=5, allowed_regression=0.02)

    decision = decide(champion, challenger, POLICY, slices=slices)

    assert decision.outcome == PROMOTED and decision.reason.startswith("better beyond noise")
    results = _by_name(decision)
    assert {name: r.verdict for name, r in results.items()} == {"new": HELD, "old": HELD, "rare": HELD}
    assert all(r.pr_auc_difference.low > 0 for r in results.values())
    assert results["new"].confidence == pytest.approx(1 - 0.05 / 3)
    record = json.loads(json.dumps(decision.to_dict()))  # the record is JSON all the way down
    assert [s["name"] for s in record["slices"]] == ["new", "old", "rare"]
    assert set(record["slices"][0]["pr_auc_difference"]) == {"estimate", "low", "high"}


def test_within_rule_blocks_a_slice_whose_interval_reaches_past_the_allowance(
    parts: dict[str, np.ndarray],
) -> None:
    # Equal on the old songs: never shown worse, but not shown within 0.02 either (the interval is wider).
    champion, challenger, slices = _models(
        parts,
        champion={"new": 1.0, "old": 3.0, "rare": 3.0},
        challenger={"new": 5.0, "old": 3.0, "rare": 3.0},
    )
    worse_rule = decide(champion, challenger, POLICY, slices=slices)
    within_rule = decide(
        champion, challenger, POLICY.model_copy(update={"slice_rule": "within"}), slices=slices
    )

    assert worse_rule.outcome == PROMOTED
    assert within_rule.outcome == REJECTED and [r.name for r in within_rule.blocking_slices] == ["old"]
    assert _by_name(within_rule)["old"].confidence == pytest.approx(0.95)


def test_without_a_champion_slices_are_reported_not_compared(parts: dict[str, np.ndarray]) -> None:
    _, challenger, slices = _models(
        parts,
        champion={"new": 1.0, "old": 1.0, "rare": 1.0},
        challenger={"new": 5.0, "old": 5.0, "rare": 5.0},
    )
    decision = decide(None, challenger, POLICY.model_copy(update={"min_pr_auc": 0.1}), slices=slices)
    assert decision.outcome == PROMOTED
    verdicts = {r.name: r.verdict for r in decision.slices}
    assert verdicts == {"new": NOT_COMPARED, "old": NOT_COMPARED, "rare": TOO_SMALL}
    assert all(r.challenger_pr_auc is not None and r.champion_pr_auc is None for r in decision.slices)


def test_overall_rule_reads_only_the_overall_rows(parts: dict[str, np.ndarray]) -> None:
    # Worse on the "new" part: judged on the old part alone, the challenger is better.
    champion, challenger, slices = _models(
        parts,
        champion={"new": 5.0, "old": 1.0, "rare": 3.0},
        challenger={"new": 1.0, "old": 5.0, "rare": 3.0},
    )
    decision = decide(champion, challenger, POLICY, overall=slices[1].rows)
    assert decision.outcome == PROMOTED and decision.rows == OLD


def test_a_mask_of_the_wrong_length_is_refused(parts: dict[str, np.ndarray]) -> None:
    champion, challenger, _ = _models(
        parts,
        champion={"new": 1.0, "old": 1.0, "rare": 1.0},
        challenger={"new": 2.0, "old": 2.0, "rare": 2.0},
    )
    short = SliceRows("short", "", np.ones(10, dtype=bool), 20, 0.02)
    with pytest.raises(ValueError, match="slice short: a mask of"):
        decide(champion, challenger, POLICY, slices=[short])


def test_the_slices_plot_draws_every_verdict(parts: dict[str, np.ndarray]) -> None:
    champion, challenger, slices = _models(
        parts,
        champion={"new": 0.5, "old": 4.0, "rare": 3.0},
        challenger={"new": 6.0, "old": 1.5, "rare": 3.0},
    )
    judged = decide(champion, challenger, POLICY, slices=slices).to_dict()["slices"]
    first = decide(None, challenger, POLICY.model_copy(update={"min_pr_auc": 0.1}), slices=slices)
    verdicts = {s["verdict"] for s in judged} | {s["verdict"] for s in first.to_dict()["slices"]}
    assert verdicts == {HELD, WORSE, TOO_SMALL, NOT_COMPARED}
    for records, against in ((judged, "1"), (first.to_dict()["slices"], None)):
        figure = slices_figure(records, against, "2")
        left, right = figure.axes
        assert [label.get_text().split("\n")[0] for label in left.get_yticklabels()] == ["new", "old", "rare"]
        assert "allowed regression" in right.get_xlabel()
