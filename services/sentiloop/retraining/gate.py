"""The promotion gate. A candidate is promoted only when all of these hold:

1. **A real gain on the feedback.** Every feedback label counts as evidence: the training
   job cross-fits (k fold models, each predicting the fold it did not see), so the
   candidate's out-of-fold predictions cover all of the feedback, not a 20% holdout. The
   one-sided 95% paired-bootstrap lower bound of the macro-F1 difference must be above
   ``min_gain`` (a one-sided test at 5%: a candidate whose true gain is below ``min_gain``
   is promoted at most about 5% of the time), and accuracy must not fall.
2. **Not worse on the fixed test set** by more than a tolerance (macro-F1 points): what the
   model knew stays known.
3. **No class collapses**: on both sets, no class's F1 falls by more than a floor, so a gain
   in two classes cannot pay for losing the third.
4. **Not worse calibrated on the test set**: its expected calibration error (of the served,
   temperature-scaled probabilities) rises by at most ``ece_tolerance``, so the confidences
   users and the labelling queue rely on stay honest.
5. **Not worse on live traffic**, when the candidate shadowed the served model
   (``POST /predict/shadow``): on at least ``shadow_min_labelled`` shadowed predictions
   that users labelled, its accuracy is not below the served model's by more than
   ``tolerance``. The registry applies the same rule (``data.shadow.shadow_problem``)
   when a version that shadowed is activated after the gate.

Decisions are pure functions of the comparisons, so the benchmark can re-run the gate on
stored predictions to measure its power and its false-promotion rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sentiloop.core.vocabulary import LABELS
from sentiloop.data.scoring import Comparison
from sentiloop.data.shadow import ShadowReport, shadow_problem


@dataclass(frozen=True)
class GateRules:
    tolerance: float  # the largest test-set macro-F1 loss accepted
    class_floor: float  # the largest fall of one class's F1, on either set
    min_gain: float  # the feedback gain the candidate must show with 95% confidence
    ece_tolerance: float  # the largest rise of the test-set expected calibration error
    # The fewest labelled shadowed predictions on which the shadow rule may refuse.
    shadow_min_labelled: int = 30


@dataclass(frozen=True)
class Decision:
    decision: str  # promoted | rejected | forced
    reason: str
    test: Comparison
    feedback: Comparison | None
    tolerance: float
    baseline_version: str
    class_floor: float
    min_gain: float
    ece_tolerance: float
    shadow: ShadowReport | None = None
    shadow_min_labelled: int = 0

    @property
    def promoted(self) -> bool:
        return self.decision in ("promoted", "forced")

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        if self.feedback is None:
            result.pop("feedback")
        result.pop("shadow")
        if self.shadow is not None:
            result["shadow"] = self.shadow.as_dict()
        return result


def _points(value: float) -> str:
    return f"{value * 100:+.1f}"


def _collapsed(comparison: Comparison, floor: float) -> list[str]:
    return [
        f"{label} F1 fell {(base - cand) * 100:.1f} points on {comparison.data_set}"
        for label, cand, base in zip(
            LABELS, comparison.candidate_class_f1, comparison.baseline_class_f1, strict=False
        )
        if cand < base - floor
    ]


def _ece_rise(test: Comparison) -> float | None:
    """How much worse the candidate is calibrated than the baseline on the test set; None
    when the comparison carries no probabilities to tell."""
    if test.candidate_ece is None or test.baseline_ece is None:
        return None
    return test.candidate_ece - test.baseline_ece


def _describe(feedback: Comparison) -> str:
    evidence = (
        f"{feedback.samples} feedback labels, out-of-fold over {feedback.folds} folds"
        if feedback.folds
        else f"{feedback.samples} held-out feedback labels"
    )
    return (
        f"feedback macro-F1 {_points(feedback.delta_macro_f1)} points (at least"
        f" {_points(feedback.delta_macro_f1_lower_bound)} with 95% confidence), accuracy"
        f" {_points(feedback.candidate_accuracy - feedback.baseline_accuracy)} on {evidence}"
    )


def decide(
    test: Comparison,
    feedback: Comparison | None,
    baseline_version: str,
    rules: GateRules,
    force: bool = False,
    shadow: ShadowReport | None = None,
) -> Decision:
    """``shadow``: the candidate's shadow evaluation on live traffic, when it shadowed."""
    tolerance, class_floor = rules.tolerance, rules.class_floor
    problems = []
    if test.delta_macro_f1 < -tolerance:
        problems.append(
            f"test macro-F1 fell {-test.delta_macro_f1 * 100:.1f} points"
            f" (tolerance {tolerance * 100:.1f})"
        )
    ece_rise = _ece_rise(test)
    if ece_rise is not None and ece_rise > rules.ece_tolerance:
        problems.append(
            f"test ECE rose {ece_rise * 100:.1f} points (tolerance {rules.ece_tolerance * 100:.1f})"
        )
    if feedback is None or feedback.samples == 0:
        problems.append("no feedback predictions to show an improvement on")
    else:
        if feedback.delta_macro_f1_lower_bound <= rules.min_gain:
            wanted = f" of more than {rules.min_gain * 100:.1f} points" if rules.min_gain else ""
            problems.append(f"no significant gain{wanted}: {_describe(feedback)}")
        if feedback.candidate_accuracy < feedback.baseline_accuracy:
            problems.append(
                f"feedback accuracy fell"
                f" {(feedback.baseline_accuracy - feedback.candidate_accuracy) * 100:.1f} points"
            )
        problems += _collapsed(feedback, class_floor)
    problems += _collapsed(test, class_floor)
    if shadow is not None and (
        problem := shadow_problem(shadow, tolerance, rules.shadow_min_labelled)
    ):
        problems.append(problem)

    def decision(verdict: str, reason: str) -> Decision:
        return Decision(
            verdict, reason, test, feedback, tolerance, baseline_version, class_floor,
            rules.min_gain, ece_tolerance=rules.ece_tolerance, shadow=shadow,
            shadow_min_labelled=rules.shadow_min_labelled,
        )  # fmt: skip

    if not problems:
        assert feedback is not None
        calibration = "" if ece_rise is None else f", ECE {_points(ece_rise)} points"
        return decision(
            "promoted",
            f"{_describe(feedback)}; test macro-F1 {_points(test.delta_macro_f1)}"
            f" points{calibration}",
        )
    reason = "; ".join(dict.fromkeys(problems))  # in order, each once
    if force:
        return decision("forced", f"forced by an operator despite: {reason}")
    return decision("rejected", reason)
