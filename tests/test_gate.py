"""The promotion gate's decisions on known predictions: a real gain is promoted,
noise and regressions are not (pure functions, no mesh)."""

from __future__ import annotations

import random

from sentiloop.evaluation.scoring import compare
from sentiloop.retraining.gate import decide


def noisy(truth: list[int], accuracy: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [
        t if rng.random() < accuracy else rng.choice([c for c in range(3) if c != t]) for t in truth
    ]


TRUTH = [i % 3 for i in range(600)]
HOLDOUT = [i % 3 for i in range(120)]


def test_a_real_gain_on_feedback_is_promoted() -> None:
    test = compare("test", TRUTH, noisy(TRUTH, 0.80, 1), noisy(TRUTH, 0.80, 2))
    feedback = compare("feedback", HOLDOUT, noisy(HOLDOUT, 0.85, 3), noisy(HOLDOUT, 0.50, 4))
    decision = decide(test, feedback, "v1")
    assert decision.decision == "promoted", decision.reason
    assert feedback.delta_ci_low > 0
    assert decision.promoted


def test_a_candidate_trained_on_flipped_labels_is_rejected() -> None:
    flipped = [(t + 1) % 3 for t in TRUTH]
    test = compare("test", TRUTH, flipped, noisy(TRUTH, 0.80, 2))
    feedback = compare("feedback", HOLDOUT, [(t + 1) % 3 for t in HOLDOUT], noisy(HOLDOUT, 0.5, 4))
    decision = decide(test, feedback, "v1")
    assert decision.decision == "rejected"
    assert "test macro-F1 fell" in decision.reason
    assert not decision.promoted


def test_a_gain_within_noise_is_not_promoted() -> None:
    test = compare("test", TRUTH, noisy(TRUTH, 0.80, 5), noisy(TRUTH, 0.80, 6))
    # Two equally good models on a small holdout: any difference is noise.
    feedback = compare(
        "feedback", HOLDOUT[:30], noisy(HOLDOUT[:30], 0.7, 7), noisy(HOLDOUT[:30], 0.7, 8)
    )
    decision = decide(test, feedback, "v1")
    assert decision.decision == "rejected"
    assert "not a significant gain" in decision.reason
    assert feedback.delta_ci_low <= 0 <= feedback.delta_ci_high


def test_losing_more_than_the_tolerance_on_the_test_set_blocks_a_feedback_gain() -> None:
    test = compare("test", TRUTH, noisy(TRUTH, 0.70, 9), noisy(TRUTH, 0.80, 10))
    feedback = compare("feedback", HOLDOUT, noisy(HOLDOUT, 0.9, 11), noisy(HOLDOUT, 0.5, 12))
    assert test.delta_macro_f1 < -0.01
    assert decide(test, feedback, "v1").decision == "rejected"
    # Within a wider tolerance the same candidate passes.
    assert decide(test, feedback, "v1", tolerance=0.5).decision == "promoted"


def test_forcing_is_recorded_as_forced() -> None:
    test = compare("test", TRUTH, [(t + 1) % 3 for t in TRUTH], TRUTH)
    decision = decide(test, None, "v1", force=True)
    assert decision.decision == "forced" and decision.promoted
    assert decision.reason.startswith("forced by an operator despite")
    assert "feedback" not in decision.as_dict()


def test_the_interval_is_paired_and_reproducible() -> None:
    a, b = noisy(TRUTH, 0.8, 1), noisy(TRUTH, 0.75, 2)
    assert compare("test", TRUTH, a, b, seed=3) == compare("test", TRUTH, a, b, seed=3)
    same = compare("test", TRUTH, a, a)
    assert same.delta_macro_f1 == same.delta_ci_low == same.delta_ci_high == 0
