"""The promotion gate: promote a candidate only when it is not worse on the fixed
test set beyond a tolerance and really better on held-out feedback, judged on the
same samples for both models with a paired-bootstrap confidence interval rather than
a bare difference (run-to-run noise is as large as the effects we look for)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sentiloop.evaluation.scoring import Comparison

DEFAULT_TOLERANCE = 0.01  # one point of macro-F1


@dataclass(frozen=True)
class Decision:
    decision: str  # promoted | rejected | forced
    reason: str
    test: Comparison
    feedback: Comparison | None
    tolerance: float
    baseline_version: str

    @property
    def promoted(self) -> bool:
        return self.decision in ("promoted", "forced")

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        if self.feedback is None:
            result.pop("feedback")
        return result


def decide(
    test: Comparison,
    feedback: Comparison | None,
    baseline_version: str,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> Decision:
    problems = []
    if test.delta_macro_f1 < -tolerance:
        problems.append(
            f"test macro-F1 fell {-test.delta_macro_f1 * 100:.1f} points"
            f" (tolerance {tolerance * 100:.1f})"
        )
    if feedback is None or feedback.samples == 0:
        problems.append("no held-out feedback to show an improvement on")
    elif feedback.delta_ci_low <= 0:
        problems.append(
            f"held-out feedback macro-F1 {feedback.delta_macro_f1 * 100:+.1f} points is not a"
            f" significant gain (95% CI {feedback.delta_ci_low * 100:+.1f}"
            f" to {feedback.delta_ci_high * 100:+.1f})"
        )
    if not problems:
        assert feedback is not None
        return Decision(
            "promoted",
            f"held-out feedback macro-F1 {feedback.delta_macro_f1 * 100:+.1f} points"
            f" (95% CI {feedback.delta_ci_low * 100:+.1f} to {feedback.delta_ci_high * 100:+.1f}),"
            f" test macro-F1 {test.delta_macro_f1 * 100:+.1f} points",
            test,
            feedback,
            tolerance,
            baseline_version,
        )
    reason = "; ".join(problems)
    if force:
        return Decision(
            "forced", f"forced by an operator despite: {reason}", test, feedback, tolerance,
            baseline_version,
        )  # fmt: skip
    return Decision("rejected", reason, test, feedback, tolerance, baseline_version)
