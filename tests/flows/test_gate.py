"""The pure champion/challenger decision, on scores with known properties."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pandas as pd
import pytest

from adapters.prediction_log import CREATED_AT
from flows import gate
from reggaeton import slices
from reggaeton.data import held_out, split, synthetic_dataset
from reggaeton.promotion import PROMOTED, REJECTED, ModelScores, decide, markdown_report
from reggaeton.schema import BASE, OBSERVED_AT, SOURCE, TRAFFIC
from reggaeton.settings import PromotionSettings

POLICY = PromotionSettings(bootstrap_rounds=300)
ROWS, PREVALENCE = 1500, 0.08


@pytest.fixture(scope="module")
def y_true() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random(ROWS) < PREVALENCE).astype(int)


def _proba(y_true: np.ndarray, separation: float, seed: int) -> np.ndarray:
    """Calibrated-ish probabilities whose ranking quality grows with ``separation``."""
    rng = np.random.default_rng(seed)
    logit = separation * (y_true - 0.5) + rng.normal(size=len(y_true)) - 2.5
    return 1 / (1 + np.exp(-logit))


def _scores(version: str, y_true: np.ndarray, proba: np.ndarray | None, latency: float = 0.3) -> ModelScores:
    return ModelScores(version=version, evaluation="data-1", y_true=y_true, proba=proba, latency_ms=latency)


def test_clearly_better_challenger_is_promoted(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 1.5, seed=1))
    challenger = _scores("2", y_true, _proba(y_true, 4.0, seed=2))

    decision = decide(champion, challenger, POLICY)

    assert decision.outcome == PROMOTED and decision.promote
    assert decision.pr_auc_gain is not None and decision.pr_auc_gain.low > 0
    assert decision.reason.startswith("better beyond noise")
    assert all(check.passed for check in decision.checks)
    assert decision.challenger_metrics["pr_auc"] > decision.champion_metrics["pr_auc"]  # type: ignore[index]
    assert (decision.rows, decision.positives) == (ROWS, int(y_true.sum()))


def test_equal_within_noise_is_rejected(y_true: np.ndarray) -> None:
    base = _proba(y_true, 2.5, seed=1)
    jitter = np.random.default_rng(3).normal(scale=0.002, size=ROWS)
    champion = _scores("1", y_true, base)
    challenger = _scores("2", y_true, np.clip(base + jitter, 0, 1))

    decision = decide(champion, challenger, POLICY)

    assert decision.outcome == REJECTED
    assert decision.reason.startswith("not better beyond noise")
    assert decision.pr_auc_gain is not None and decision.pr_auc_gain.low <= 0 <= decision.pr_auc_gain.high


def test_identical_models_are_not_better_beyond_noise(y_true: np.ndarray) -> None:
    proba = _proba(y_true, 2.5, seed=1)
    decision = decide(_scores("1", y_true, proba), _scores("2", y_true, proba.copy()), POLICY)
    assert decision.outcome == REJECTED and decision.reason.startswith("not better beyond noise")


def test_worse_challenger_is_rejected(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 4.0, seed=1))
    challenger = _scores("2", y_true, _proba(y_true, 1.5, seed=2))

    decision = decide(champion, challenger, POLICY)

    assert decision.outcome == REJECTED
    assert decision.pr_auc_gain is not None and decision.pr_auc_gain.high < 0
    assert "not better beyond noise" in decision.reason


def test_min_gain_raises_the_bar(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 2.0, seed=1))
    challenger = _scores("2", y_true, _proba(y_true, 3.0, seed=2))
    assert decide(champion, challenger, POLICY).promote
    assert not decide(champion, challenger, POLICY.model_copy(update={"min_gain": 0.5})).promote


def test_better_primary_but_miscalibrated_is_rejected_on_brier(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 1.5, seed=1))
    good = _proba(y_true, 4.0, seed=2)
    # Same ranking (same PR-AUC and ROC-AUC), but every probability pushed towards 1: Brier explodes.
    challenger = _scores("2", y_true, 0.5 + good / 2)

    decision = decide(champion, challenger, POLICY)

    assert decision.outcome == REJECTED
    assert decision.reason.startswith("better on PR-AUC")
    assert "Brier" in decision.reason
    failed = {check.name for check in decision.checks if not check.passed}
    assert failed == {"brier"}


def test_better_primary_but_slower_is_rejected_on_latency(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 1.5, seed=1), latency=4.0)
    slow = 4.0 * POLICY.latency_tolerance * 1.5
    assert slow > POLICY.latency_budget_ms
    challenger = _scores("2", y_true, _proba(y_true, 4.0, seed=2), latency=slow)

    decision = decide(champion, challenger, POLICY)

    assert decision.outcome == REJECTED
    assert {c.name for c in decision.checks if not c.passed} == {"latency"}
    assert "latency" in decision.reason


def test_slower_challenger_within_the_latency_budget_is_promoted(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 1.5, seed=1), latency=0.3)
    slower = 0.3 * POLICY.latency_tolerance * 3
    assert slower < POLICY.latency_budget_ms
    challenger = _scores("2", y_true, _proba(y_true, 4.0, seed=2), latency=slower)

    decision = decide(champion, challenger, POLICY)

    assert decision.outcome == PROMOTED, decision.reason


def test_broken_challenger_is_rejected_with_its_problem(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 2.0, seed=1))
    broken = ModelScores("2", "data-1", y_true, proba=None, problems=("failed to load: bad artifact",))

    decision = decide(champion, broken, POLICY)

    assert decision.outcome == REJECTED
    assert decision.reason == "invalid challenger: failed to load: bad artifact"
    assert decision.challenger_metrics == {}


def test_no_champion_promotes_above_the_floors(y_true: np.ndarray) -> None:
    decision = decide(None, _scores("1", y_true, _proba(y_true, 4.0, seed=2)), POLICY)
    assert decision.outcome == PROMOTED
    assert decision.champion_version is None and decision.reason.startswith("no champion yet")
    assert {c.name for c in decision.checks} == {"valid", "floor_pr_auc", "floor_roc_auc"}


def test_no_champion_rejects_below_the_floors(y_true: np.ndarray) -> None:
    decision = decide(None, _scores("1", y_true, _proba(y_true, 0.5, seed=2)), POLICY)
    assert decision.outcome == REJECTED
    assert "below the floor" in decision.reason and "PR-AUC" in decision.reason


def test_unusable_champion_falls_back_to_the_floors(y_true: np.ndarray) -> None:
    champion = ModelScores("1", "data-1", y_true, proba=None, problems=("failed to load: gone",))
    decision = decide(champion, _scores("2", y_true, _proba(y_true, 4.0, seed=2)), POLICY)
    assert decision.outcome == PROMOTED
    assert "champion 1 is unusable" in decision.reason


def test_scores_on_different_data_are_refused(y_true: np.ndarray) -> None:
    proba = _proba(y_true, 2.0, seed=1)
    other = ModelScores("2", "data-2", y_true, proba=proba, latency_ms=0.3)
    with pytest.raises(ValueError, match="different evaluation data"):
        decide(_scores("1", y_true, proba), other, POLICY)


def test_decision_record_and_report_carry_every_number(y_true: np.ndarray) -> None:
    champion = _scores("1", y_true, _proba(y_true, 1.5, seed=1))
    decision = decide(champion, _scores("2", y_true, _proba(y_true, 4.0, seed=2)), POLICY)

    record = json.loads(json.dumps(decision.to_dict()))
    assert record["pr_auc_gain"]["low"] == decision.pr_auc_gain.low  # type: ignore[union-attr]
    assert record["policy"]["min_gain"] == POLICY.min_gain
    assert set(record["challenger_metrics"]) == {"pr_auc", "roc_auc", "brier", "latency_ms"}
    report = markdown_report(decision)
    assert "| PR-AUC |" in report and "version 1" in report and "version 2" in report
    assert f"{decision.challenger_metrics['pr_auc']:.4f}" in report


def test_evaluation_rows_hold_the_champions_held_out_rows_traffic_and_a_fresh_sample() -> None:
    """What the slices read: each row's origin, source and time, and whether the champion held it out."""
    first = split(synthetic_dataset(2300, seed=42), 0.25, seed=42)
    second = split(synthetic_dataset(4000, seed=42), 0.25, seed=42)  # a larger draw: shares songs
    other = synthetic_dataset(300, seed=5).frame  # a champion split by another rule: some rows trained on
    champion_reference = pd.concat([first.holdout, other], ignore_index=True)
    when = pd.Timestamp("2026-12-06 12:00", tz="UTC")
    traffic = synthetic_dataset(200, seed=8).frame.assign(**{CREATED_AT: when}).drop(columns=[OBSERVED_AT])
    traffic = pd.concat([traffic, second.holdout.head(3).assign(**{CREATED_AT: when})], ignore_index=True)
    rule = partial(held_out, fraction=0.25, seed=42)

    frame = gate.evaluation_frame(
        second.holdout,
        traffic,
        champion_reference=champion_reference,
        fresh=synthetic_dataset(500, seed=77).frame,
        held_out=rule,
    )

    origins = frame[slices.ORIGIN].value_counts().to_dict()
    assert origins[gate.HOLDOUT] == len(second.holdout)
    # The champion's held-out rows the challenger's lack, only those the stable split holds out.
    shared = frame[(frame[slices.ORIGIN] == gate.HOLDOUT) & (frame[slices.CHAMPION_REFERENCE] == 1)]
    assert len(shared) > 0  # the same songs in both versions' data: held out by both
    assert origins[slices.CHAMPION_HOLDOUT] == int(rule(champion_reference).sum()) - len(shared)
    assert frame[slices.CHAMPION_REFERENCE].sum() == int(rule(champion_reference).sum())
    assert origins[gate.TRAFFIC] == 200  # the 3 songs already held out are not counted twice
    assert origins[gate.FRESH] == 500
    traffic_rows = frame[frame[slices.ORIGIN] == gate.TRAFFIC]
    assert (traffic_rows[SOURCE] == TRAFFIC).all() and (traffic_rows[OBSERVED_AT] == when).all()
    assert (frame.loc[frame[slices.ORIGIN] != gate.TRAFFIC, SOURCE] == BASE).all()
    assert gate.overall_rows(frame).sum() == len(second.holdout) + 200
