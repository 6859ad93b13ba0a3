"""The promotion gate's decisions on constructed predictions: a real gain is promoted even
on a small feedback set, noise, shuffled labels, regressions and class collapses are not,
and over many equally good pairs it promotes about 5% at most (pure functions, no mesh)."""

from __future__ import annotations

import random
from dataclasses import replace

from sentiloop.core.config import load_settings
from sentiloop.data.scoring import compare
from sentiloop.retraining.gate import decide
from sentiloop.retraining.servicer import load_policy

DEFAULTS = load_policy(load_settings({})).gate  # what a mesh without settings uses


def noisy(truth: list[int], accuracy: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [
        t if rng.random() < accuracy else rng.choice([c for c in range(3) if c != t]) for t in truth
    ]


TRUTH = [i % 3 for i in range(600)]  # the fixed test set
FEEDBACK = [i % 3 for i in range(150)]  # a small burst of feedback, scored out of fold


def test_a_real_gain_on_a_small_feedback_set_is_promoted() -> None:
    test = compare("test", TRUTH, noisy(TRUTH, 0.80, 1), noisy(TRUTH, 0.80, 2))
    feedback = compare(
        "feedback", FEEDBACK, noisy(FEEDBACK, 0.72, 3), noisy(FEEDBACK, 0.55, 4), folds=4
    )
    decision = decide(test, feedback, "v1", DEFAULTS)
    assert decision.decision == "promoted", decision.reason
    assert decision.promoted
    assert 0 < feedback.delta_macro_f1_lower_bound < feedback.delta_macro_f1
    assert "out-of-fold over 4 folds" in decision.reason
    recorded = decision.as_dict()
    assert recorded["feedback"]["folds"] == 4 and recorded["class_floor"] == 0.05


def test_a_candidate_trained_on_shuffled_labels_is_rejected() -> None:
    # Shuffled training labels teach nothing: out of fold it guesses, so it is no better
    # than the active model on the feedback and much worse on the test set.
    rng = random.Random(5)
    guesses = [rng.randrange(3) for _ in FEEDBACK]
    test = compare("test", TRUTH, [rng.randrange(3) for _ in TRUTH], noisy(TRUTH, 0.80, 2))
    feedback = compare("feedback", FEEDBACK, guesses, noisy(FEEDBACK, 0.55, 4), folds=4)
    decision = decide(test, feedback, "v1", DEFAULTS)
    assert decision.decision == "rejected"
    assert "no significant gain" in decision.reason
    assert "test macro-F1 fell" in decision.reason


def test_a_class_collapse_is_rejected_even_with_a_macro_gain() -> None:
    # The same as the active model, except that it finds only a fifth of the neutrals.
    base_test = noisy(TRUTH, 0.80, 6)
    collapsed = [
        0 if truth == 1 and i % 5 else guess
        for i, (truth, guess) in enumerate(zip(TRUTH, base_test, strict=True))
    ]
    test = compare("test", TRUTH, collapsed, base_test)
    feedback = compare(
        "feedback", FEEDBACK, noisy(FEEDBACK, 0.80, 7), noisy(FEEDBACK, 0.55, 8), folds=4
    )
    decision = decide(
        test, feedback, "v1", replace(DEFAULTS, tolerance=1.0)
    )  # macro-F1 alone would pass
    assert decision.decision == "rejected"
    assert "neutral F1 fell" in decision.reason and "on test" in decision.reason
    assert decide(test, feedback, "v1", replace(DEFAULTS, tolerance=1.0, class_floor=1.0)).promoted


def test_a_gain_within_noise_is_not_promoted() -> None:
    test = compare("test", TRUTH, noisy(TRUTH, 0.80, 5), noisy(TRUTH, 0.80, 6))
    feedback = compare("feedback", FEEDBACK, noisy(FEEDBACK, 0.7, 7), noisy(FEEDBACK, 0.7, 8))
    decision = decide(test, feedback, "v1", DEFAULTS)
    assert decision.decision == "rejected"
    assert "no significant gain" in decision.reason
    assert feedback.delta_macro_f1_lower_bound <= 0


def test_equally_good_models_are_promoted_at_most_about_five_percent_of_the_time() -> None:
    # The one-sided bound is a 5% test: over many pairs of equally good models the gate
    # promotes about 5% (fewer here, as accuracy must not fall either).
    test = compare("test", TRUTH, noisy(TRUTH, 0.80, 1), noisy(TRUTH, 0.80, 1))
    truth = [i % 3 for i in range(300)]
    promoted = sum(
        decide(
            test,
            compare("feedback", truth, noisy(truth, 0.7, 2 * i), noisy(truth, 0.7, 2 * i + 1), i),
            "v1",
            DEFAULTS,
        ).promoted
        for i in range(200)
    )
    assert promoted <= 14, f"{promoted} of 200 null decisions promoted"


def test_losing_more_than_the_tolerance_on_the_test_set_blocks_a_feedback_gain() -> None:
    test = compare("test", TRUTH, noisy(TRUTH, 0.70, 9), noisy(TRUTH, 0.80, 10))
    feedback = compare("feedback", FEEDBACK, noisy(FEEDBACK, 0.9, 11), noisy(FEEDBACK, 0.5, 12))
    assert test.delta_macro_f1 < -0.01
    assert decide(test, feedback, "v1", DEFAULTS).decision == "rejected"
    # Within a wider tolerance and class floor the same candidate passes.
    assert (
        decide(test, feedback, "v1", replace(DEFAULTS, tolerance=0.5, class_floor=0.5)).decision
        == "promoted"
    )


def test_falling_accuracy_on_the_feedback_blocks_a_macro_f1_gain() -> None:
    # Minority-class gains bought with majority-class errors: macro-F1 up, accuracy down.
    truth = [0] * 240 + [1] * 30 + [2] * 30
    baseline = [0] * 240 + [0] * 30 + [0] * 30
    candidate = [0] * 170 + [1] * 70 + [1] * 30 + [2] * 30
    test = compare("test", TRUTH, TRUTH, TRUTH)
    feedback = compare("feedback", truth, candidate, baseline, folds=4)
    assert (
        feedback.delta_macro_f1 > 0.3 and feedback.candidate_accuracy < feedback.baseline_accuracy
    )
    decision = decide(test, feedback, "v1", replace(DEFAULTS, class_floor=1.0))
    assert decision.decision == "rejected" and "feedback accuracy fell" in decision.reason


def test_no_feedback_predictions_is_a_rejection_and_forcing_is_recorded() -> None:
    test = compare("test", TRUTH, [(t + 1) % 3 for t in TRUTH], TRUTH)
    assert "no feedback predictions" in decide(test, None, "v1", DEFAULTS).reason
    decision = decide(test, None, "v1", DEFAULTS, force=True)
    assert decision.decision == "forced" and decision.promoted
    assert decision.reason.startswith("forced by an operator despite")
    assert "feedback" not in decision.as_dict()


def test_the_bounds_are_paired_and_reproducible() -> None:
    a, b = noisy(TRUTH, 0.8, 1), noisy(TRUTH, 0.75, 2)
    assert compare("test", TRUTH, a, b, seed=3) == compare("test", TRUTH, a, b, seed=3)
    one = compare("test", TRUTH, a, b)
    assert one.delta_ci_low <= one.delta_macro_f1_lower_bound <= one.delta_macro_f1
    assert len(one.candidate_class_f1) == len(one.baseline_class_f1) == 3
    same = compare("test", TRUTH, a, a)
    assert same.delta_macro_f1 == same.delta_ci_low == same.delta_ci_high == 0
    assert same.delta_macro_f1_lower_bound == same.delta_accuracy_lower_bound == 0
