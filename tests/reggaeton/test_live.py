"""The live gate's rules (reggaeton.live): planned looks, errors, canary latency, and the actions."""

from __future__ import annotations

import numpy as np
import pytest

from reggaeton import live
from reggaeton.live import LabelledPairs, LatencyCluster, LiveEvidence
from reggaeton.settings import LiveSettings

POLICY = LiveSettings(min_positives=20, max_looks=3, bootstrap_rounds=200, confidence=0.95)


def _pairs(
    rows: int, prior: float, champion_noise: float, challenger_noise: float, seed: int
) -> LabelledPairs:
    """Labels and two models' scores: the lower a model's noise, the better it ranks the positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < prior).astype(np.int64)

    def scores(noise: float) -> np.ndarray:
        raw = y + rng.normal(0, noise, rows)
        return 1 / (1 + np.exp(-4 * (raw - 0.5)))

    return LabelledPairs(y, scores(champion_noise), scores(challenger_noise))


def test_looks_are_planned_in_positives_and_share_the_error_between_them() -> None:
    assert live.planned_looks(POLICY) == (20, 40, 80)
    assert live.look_confidence(POLICY) == pytest.approx(1 - 0.05 / 3)


def test_before_the_first_look_the_gate_waits_and_says_how_many_positives_it_needs() -> None:
    verdict = live.judge_labelled(_pairs(200, 0.05, 0.6, 0.2, seed=1), POLICY)
    assert verdict.positives < 20
    assert verdict.verdict == live.WAITING
    assert "of the 20 the first look needs" in verdict.detail


def test_a_clearly_better_challenger_is_better_at_the_first_look() -> None:
    pairs = _pairs(400, 0.3, champion_noise=0.9, challenger_noise=0.15, seed=2)
    verdict = live.judge_labelled(pairs, POLICY)
    assert verdict.verdict == live.BETTER
    assert verdict.looks[0].positives == 20
    assert verdict.looks[0].gain.low > 0
    assert verdict.challenger_pr_auc > verdict.champion_pr_auc


def test_a_clearly_worse_challenger_is_worse() -> None:
    verdict = live.judge_labelled(_pairs(400, 0.3, champion_noise=0.15, challenger_noise=0.9, seed=3), POLICY)
    assert verdict.verdict == live.WORSE
    assert verdict.looks[-1].gain.high < 0


def test_an_equal_challenger_waits_for_the_next_look_then_is_not_shown_better_at_the_last() -> None:
    rng_pairs = _pairs(2000, 0.1, champion_noise=0.5, challenger_noise=0.5, seed=4)
    same = LabelledPairs(rng_pairs.y_true, rng_pairs.champion, rng_pairs.champion.copy())
    early = live.judge_labelled(same.first(30), POLICY)
    assert early.verdict == live.INCONCLUSIVE
    assert early.next_look == 40
    final = live.judge_labelled(same, POLICY)
    assert final.positives >= 80
    assert final.verdict == live.NOT_SHOWN_BETTER
    assert [look.positives for look in final.looks] == [20, 40, 80]


def test_a_look_judges_the_same_rows_however_many_labels_arrive_after_it() -> None:
    """The mechanism that bounds the error over repeated runs: a look is taken once, on fixed rows."""
    pairs = _pairs(3000, 0.1, champion_noise=0.5, challenger_noise=0.45, seed=5)
    first = live.judge_labelled(pairs.first(45), POLICY).looks
    later = live.judge_labelled(pairs.first(79), POLICY).looks
    assert first[:2] == later[:2]


def test_errors_beyond_noise_of_the_allowed_rate() -> None:
    assert live.judge_errors("shadow", errors=12, attempts=12, policy=POLICY).exceeded
    assert not live.judge_errors("shadow", errors=0, attempts=5000, policy=POLICY).exceeded
    # 1.4 % observed against 1 % allowed is not beyond noise on 500 answers.
    assert not live.judge_errors("canary", errors=7, attempts=500, policy=POLICY).exceeded
    assert "no shadow answers yet" in live.judge_errors("shadow", 0, 0, POLICY).detail


def test_canary_latency_is_judged_over_clusters_against_its_budget() -> None:
    slow = [LatencyCluster(0.040 + 0.002 * i, 0.001) for i in range(4)]
    assert live.judge_latency(slow, POLICY).exceeded
    same = [LatencyCluster(0.0012 + 0.0004 * (-1) ** i, 0.001) for i in range(6)]
    verdict = live.judge_latency(same, POLICY)
    assert verdict.difference_ms is not None and not verdict.exceeded
    assert live.judge_latency(slow[:1], POLICY).difference_ms is None


def _evidence(**changes: object) -> LiveEvidence:
    labelled = live.judge_labelled(_pairs(100, 0.05, 0.5, 0.5, seed=6), POLICY)  # waiting
    base: dict[str, object] = {
        "state": live.SHADOW,
        "elapsed_s": 10.0,
        "labelled": labelled,
        "shadow_errors": live.judge_errors("shadow", 0, 100, POLICY),
    }
    return LiveEvidence(**{**base, **changes})  # type: ignore[arg-type]


BETTER = live.judge_labelled(_pairs(400, 0.3, 0.9, 0.15, seed=2), POLICY)
WORSE = live.judge_labelled(_pairs(400, 0.3, 0.15, 0.9, seed=3), POLICY)


def test_shadow_waits_then_promotes_on_labelled_evidence_or_rejects() -> None:
    assert live.decide(_evidence(), POLICY).action == live.WAIT
    assert live.decide(_evidence(labelled=BETTER), POLICY).action == live.PROMOTE
    assert live.decide(_evidence(labelled=WORSE), POLICY).action == live.REJECT
    ended = live.decide(_evidence(elapsed_s=POLICY.max_duration_s), POLICY)
    assert ended.action == live.REJECT and "window" in ended.reason
    failing = live.decide(_evidence(shadow_errors=live.judge_errors("shadow", 50, 50, POLICY)), POLICY)
    assert failing.action == live.REJECT and "errors" in failing.reason


def test_the_offline_gate_must_still_pass_for_a_promotion() -> None:
    action = live.decide(_evidence(labelled=BETTER), POLICY)
    assert live.with_offline(action, True, "ok") == action
    refused = live.with_offline(action, False, "slice 'base-data' is worse")
    assert refused.action == live.REJECT and "base-data" in refused.reason


def test_the_canary_starts_after_the_shadow_then_steps_then_promotes() -> None:
    policy = POLICY.model_copy(
        update={"canary_after_s": 60.0, "canary_step_s": 30.0, "canary_min_requests": 10}
    )
    assert live.decide(_evidence(canary_wanted=True, elapsed_s=30.0), policy).action == live.WAIT
    start = live.decide(_evidence(canary_wanted=True, elapsed_s=61.0, labelled=BETTER), policy)
    assert (start.action, start.share, start.step) == (live.START_CANARY, 0.05, 0)

    def canary(step: int, **changes: object) -> LiveEvidence:
        base = {
            "state": live.CANARY,
            "canary_step": step,
            "canary_errors": live.judge_errors("canary", 0, 50, policy),
            "latency": live.judge_latency([LatencyCluster(0.001, 0.001)] * 3, policy),
            "step_elapsed_s": 31.0,
            "step_requests": 50,
        }
        return _evidence(**{**base, **changes})

    advance = live.decide(canary(0), policy)
    assert (advance.action, advance.share, advance.step) == (live.ADVANCE_CANARY, 0.25, 1)
    held = live.decide(canary(1, step_requests=3), policy)
    assert (held.action, held.share) == (live.WAIT, 0.25)
    last = len(policy.canary_steps) - 1
    assert live.decide(canary(last), policy).action == live.WAIT  # steps done, labels not yet better
    assert live.decide(canary(last, labelled=BETTER), policy).action == live.PROMOTE
    slow = canary(1, latency=live.judge_latency([LatencyCluster(0.05, 0.001)] * 3, policy))
    aborted = live.decide(slow, policy)
    assert aborted.action == live.ABORT_CANARY and "too slow" in aborted.reason
    failing = live.decide(canary(0, canary_errors=live.judge_errors("canary", 40, 40, policy)), policy)
    assert failing.action == live.ABORT_CANARY
    assert live.decide(canary(2, labelled=WORSE), policy).action == live.ABORT_CANARY
