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

Decisions are pure functions of the comparisons, so the benchmark can re-run the gate on
stored predictions to measure its power and its false-promotion rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sentiloop.core.vocabulary import LABELS
from sentiloop.data.scoring import Comparison


@dataclass(frozen=True)
class GateRules:
    tolerance: float  # the largest test-set macro-F1 loss accepted
    class_floor: float  # the largest fall of one class's F1, on either set
    min_gain: float  # the feedback gain the candidate must show with 95% confidence


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

    @property
    def promoted(self) -> bool:
        return self.decision in ("promoted", "forced")

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        if self.feedback is None:
            result.pop("feedback")
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
) -> Decision:
    tolerance, class_floor = rules.tolerance, rules.class_floor
    problems = []
    if test.delta_macro_f1 < -tolerance:
        problems.append(
            f"test macro-F1 fell {-test.delta_macro_f1 * 100:.1f} points"
            f" (tolerance {tolerance * 100:.1f})"
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

    def decision(verdict: str, reason: str) -> Decision:
        return Decision(
            verdict, reason, test, feedback, tolerance, baseline_version, class_floor,
            rules.min_gain,
        )  # fmt: skip

    if not problems:
        assert feedback is not None
        return decision(
            "promoted",
            f"{_describe(feedback)}; test macro-F1 {_points(test.delta_macro_f1)} points",
        )
    reason = "; ".join(dict.fromkeys(problems))  # in order, each once
    if force:
        return decision("forced", f"forced by an operator despite: {reason}")
    return decision("rejected", reason)
