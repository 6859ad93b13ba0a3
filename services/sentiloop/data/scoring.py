"""Scoring models on labelled data, and comparing two of them on the same samples
(domain logic; no grpc here)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sentiloop.core.scripts import load_script
from sentiloop.core.vocabulary import LABELS, normalize_label

BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Labelled:
    texts: list[str]
    labels: list[int]  # indices into LABELS


def labelled(pairs: Sequence[tuple[str, str]]) -> Labelled:
    labels = []
    for _, raw in pairs:
        label = normalize_label(raw)
        if label is None:
            raise ValueError(f"{raw!r} is not a label")
        labels.append(LABELS.index(label))
    return Labelled(texts=[text for text, _ in pairs], labels=labels)


def read_labelled_csv(content: bytes) -> Labelled:
    rows = csv.DictReader(io.StringIO(content.decode("utf-8")))
    return labelled([(row["text"], row["label"]) for row in rows])


def predict_labels(model: Any, texts: list[str]) -> list[int]:
    return predict(model, texts)[0]


def predict(model: Any, texts: list[str]) -> tuple[list[int], list[list[float]]]:
    """Each text's label (an index into LABELS) and its served, calibrated probabilities
    (in LABELS order), through inference.py's one predict path."""
    if not texts:
        return [], []
    index = {label: i for i, label in enumerate(LABELS)}
    outputs = load_script("inference").predict_texts(model, texts)
    return (
        [index[out["label"]] for out in outputs],
        [[float(out["scores"][label]) for label in LABELS] for out in outputs],
    )


def metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    probabilities: Sequence[Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The same metrics train.py reports, computed by the same function; ``ece`` and
    ``brier`` too when the probabilities (samples x LABELS) are given."""
    train = load_script("train")
    result: dict[str, Any] = train.compute_metrics(y_true, y_pred, LABELS, probabilities)
    return result


def _calibration(
    truth: Sequence[int], probabilities: Sequence[Sequence[float]] | None
) -> tuple[float | None, float | None]:
    if probabilities is None or len(truth) == 0:
        return None, None
    found: dict[str, float] = load_script("train").calibration_metrics(truth, probabilities)
    return found["ece"], found["brier"]


def _class_f1(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    f1: np.ndarray = load_script("train").class_f1(truth, pred, k)
    return f1


def _macro_f1(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each row of (resamples x samples) label arrays, vectorised."""
    mean: np.ndarray = _class_f1(truth, pred, k).mean(axis=-1)
    return mean


@dataclass(frozen=True)
class Comparison:
    data_set: str
    samples: int
    candidate_macro_f1: float
    baseline_macro_f1: float
    delta_macro_f1: float
    delta_ci_low: float  # 95% two-sided paired-bootstrap interval of the delta
    delta_ci_high: float
    candidate_accuracy: float
    baseline_accuracy: float
    # One-sided 95% lower bounds (the 5th percentiles): "at least this much better".
    delta_macro_f1_lower_bound: float = 0.0
    delta_accuracy_lower_bound: float = 0.0
    candidate_class_f1: tuple[float, ...] = ()  # in LABELS order
    baseline_class_f1: tuple[float, ...] = ()
    # k when the candidate's predictions are out-of-fold (cross-fitted), else 0.
    folds: int = 0
    # Expected calibration error (15 bins) and Brier score of each model's probabilities;
    # None where only labels are known (out-of-fold predictions keep none).
    candidate_ece: float | None = None
    baseline_ece: float | None = None
    candidate_brier: float | None = None
    baseline_brier: float | None = None


def compare(
    data_set: str,
    truth: Sequence[int],
    candidate: Sequence[int],
    baseline: Sequence[int],
    seed: int = 13,
    resamples: int = BOOTSTRAP_RESAMPLES,
    folds: int = 0,
    candidate_probabilities: Sequence[Sequence[float]] | None = None,
    baseline_probabilities: Sequence[Sequence[float]] | None = None,
) -> Comparison:
    """Both models on the same samples, with paired-bootstrap bounds of the macro-F1 and
    accuracy differences: each resample draws the same samples for both models, so the
    bounds reflect how much the difference depends on which samples were drawn. With both
    models' probabilities, their ECE and Brier scores too."""
    y = np.asarray(truth)
    a = np.asarray(candidate)
    b = np.asarray(baseline)
    k = len(LABELS)
    n = len(y)
    if n == 0:
        return Comparison(data_set, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, folds=folds)
    class_a = _class_f1(y, a, k)
    class_b = _class_f1(y, b, k)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    deltas = _macro_f1(y[draws], a[draws], k) - _macro_f1(y[draws], b[draws], k)
    accuracy_deltas = (a[draws] == y[draws]).mean(axis=1) - (b[draws] == y[draws]).mean(axis=1)
    low, lower_bound, high = np.quantile(deltas, [0.025, 0.05, 0.975])
    both = candidate_probabilities is not None and baseline_probabilities is not None
    candidate_ece, candidate_brier = _calibration(truth, candidate_probabilities if both else None)
    baseline_ece, baseline_brier = _calibration(truth, baseline_probabilities if both else None)
    return Comparison(
        data_set=data_set,
        samples=n,
        candidate_macro_f1=float(class_a.mean()),
        baseline_macro_f1=float(class_b.mean()),
        delta_macro_f1=float(class_a.mean() - class_b.mean()),
        delta_ci_low=float(low),
        delta_ci_high=float(high),
        candidate_accuracy=float((a == y).mean()),
        baseline_accuracy=float((b == y).mean()),
        delta_macro_f1_lower_bound=float(lower_bound),
        delta_accuracy_lower_bound=float(np.quantile(accuracy_deltas, 0.05)),
        candidate_class_f1=tuple(float(f) for f in class_a),
        baseline_class_f1=tuple(float(f) for f in class_b),
        folds=folds,
        candidate_ece=candidate_ece,
        baseline_ece=baseline_ece,
        candidate_brier=candidate_brier,
        baseline_brier=baseline_brier,
    )


CROSSFIT_FILE = "crossfit.csv"  # written into the model folder by train.py


@dataclass(frozen=True)
class CrossFitted:
    """The candidate's out-of-fold predictions on the feedback it was trained with
    (train.py's crossfit.csv): each from a fold model that never saw that text."""

    feedback: Labelled
    predictions: list[int]
    folds: int


def read_crossfit_csv(content: bytes) -> CrossFitted:
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8"))))
    return CrossFitted(
        feedback=labelled([(row["text"], row["label"]) for row in rows]),
        predictions=labelled([(row["text"], row["prediction"]) for row in rows]).labels,
        folds=len({row["fold"] for row in rows}),
    )
