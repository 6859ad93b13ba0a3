"""Shadow evaluation's verdict, shared by InferenceService (which measures it), the
registry (which keeps it with the version and applies the rule on activation) and the
promotion gate (pure functions; no grpc here).

A candidate shadows live traffic: it scores the very requests the served model answered,
so the two are compared on the traffic that matters rather than on a fixed test set, and,
once users label some of those predictions, on the labels that matter too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sentiloop.core.vocabulary import LABELS
from sentiloop.data.scoring import metrics


class ShadowState(StrEnum):
    NONE = "none"
    LOADING = "loading"
    RUNNING = "running"
    ENDED = "ended"


@dataclass(frozen=True)
class ShadowReport:
    state: str = ShadowState.NONE
    shadow_version: str = ""
    served_versions: tuple[str, ...] = ()
    started_at: datetime | None = None
    ends_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str = ""
    shadowed: int = 0
    skipped: int = 0
    agreement: float = 0.0
    labelled: int = 0
    shadow_accuracy: float = 0.0
    served_accuracy: float = 0.0
    shadow_macro_f1: float = 0.0
    served_macro_f1: float = 0.0
    computed_at: datetime | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, in the proto's field names (timestamps as RFC 3339 strings)."""
        result: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            if value is not None:
                result[item.name] = value
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShadowReport:
        """The inverse of :meth:`as_dict`, and of the proto's JSON form (the registry keeps
        that); unknown keys are ignored, missing ones take their defaults."""
        known = {item.name: item for item in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known or value is None:
                continue
            if name.endswith("_at"):
                value = datetime.fromisoformat(str(value))
            elif name == "served_versions":
                value = tuple(str(v) for v in value)
            elif name in ("shadowed", "skipped", "labelled"):
                value = int(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                value = float(value)
            values[name] = value
        return cls(**values)


def supersedes(new: ShadowReport, old: ShadowReport) -> bool:
    """Whether ``new`` is a later report than ``old``: of a later run, or computed later."""
    epoch = datetime.min.replace(tzinfo=UTC)
    return (new.started_at or epoch, new.computed_at or epoch) >= (
        old.started_at or epoch,
        old.computed_at or epoch,
    )


@dataclass(frozen=True)
class ShadowRule:
    """The promotion gate's shadow rule (see :func:`shadow_problem`)."""

    tolerance: float
    min_labelled: int


@dataclass(frozen=True)
class LabelledScores:
    labelled: int
    shadow_accuracy: float
    served_accuracy: float
    shadow_macro_f1: float
    served_macro_f1: float


def macro_f1(truth: list[str], predicted: list[str]) -> float:
    """Macro-F1 by the project's one F1 (train.py's, through sentiloop.data.scoring), so the
    shadow's figures are those Evaluate and the gate report."""
    index = {label: i for i, label in enumerate(LABELS)}
    result = metrics([index[t] for t in truth], [index[p] for p in predicted])
    return float(result["macro_f1"])


def score_labelled(rows: Iterable[tuple[str, str, str]]) -> LabelledScores:
    """Both models on the shadowed predictions users labelled: ``rows`` are (the
    candidate's label, the served label, the user's label)."""
    shadow, served, truth = [], [], []
    for shadow_label, served_label, user_label in rows:
        shadow.append(shadow_label)
        served.append(served_label)
        truth.append(user_label)
    n = len(truth)
    if n == 0:
        return LabelledScores(0, 0.0, 0.0, 0.0, 0.0)
    return LabelledScores(
        labelled=n,
        shadow_accuracy=sum(s == t for s, t in zip(shadow, truth, strict=True)) / n,
        served_accuracy=sum(s == t for s, t in zip(served, truth, strict=True)) / n,
        shadow_macro_f1=macro_f1(truth, shadow),
        served_macro_f1=macro_f1(truth, served),
    )


def shadow_problem(report: ShadowReport, tolerance: float, min_labelled: int) -> str | None:
    """Why the shadow evidence refuses promoting its candidate, or None: on at least
    ``min_labelled`` labelled shadowed predictions, the candidate's accuracy is below the
    served model's by more than ``tolerance``. Fewer labels say nothing either way."""
    if report.labelled < min_labelled:
        return None
    gap = report.served_accuracy - report.shadow_accuracy
    if gap <= tolerance + 1e-9:  # 0.81 - 0.80 is not more than a 0.01 tolerance
        return None
    return (
        f"shadowing live traffic, {report.shadow_version} was {gap * 100:.1f} points less"
        f" accurate than the served model on {report.labelled} labelled predictions"
        f" ({report.shadow_accuracy:.1%} against {report.served_accuracy:.1%};"
        f" tolerance {tolerance * 100:.1f})"
    )
