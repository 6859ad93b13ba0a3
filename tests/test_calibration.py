"""Calibration: temperature scaling fitted by train.py and applied by inference.py's one
predict path, ECE and Brier score next to compute_metrics, and the gate's ECE rule.

The over-confident model is constructed (logits of a classifier right 70% of the time,
scaled up), the gate's comparisons too (pure functions); the training run is a real tiny
one, whose served scores are checked against logits computed here with transformers."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from test_train_script import LABELS, Run, inference, run_train, train

from sentiloop.core.config import load_settings
from sentiloop.core.convert import metrics_from_proto, metrics_to_proto
from sentiloop.data.scoring import compare
from sentiloop.data.vader import build_dataset
from sentiloop.evaluation.evaluator import EvaluationStore, Known
from sentiloop.evaluation.servicer import comparison_to_proto
from sentiloop.retraining.gate import decide
from sentiloop.retraining.servicer import _comparison, load_policy
from sentiloop.v1 import common_pb2

RULES = load_policy(load_settings({})).gate  # what a mesh without settings uses


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------- ECE and Brier


def test_ece_and_brier_by_hand() -> None:
    probabilities = [
        [0.90, 0.05, 0.05],  # right at 0.90: bin 13 of 15
        [0.62, 0.28, 0.10],  # wrong at 0.62: bin 9 ...
        [0.20, 0.18, 0.62],  # ... right at 0.62: bin 9 is half right at 0.62
        [0.34, 0.33, 0.33],  # right at 0.34: bin 5
    ]
    truth = [0, 1, 2, 0]
    found = train.calibration_metrics(truth, probabilities)
    # 1/4 |1 - 0.9| + 2/4 |0.5 - 0.62| + 1/4 |1 - 0.34|
    assert found["ece"] == pytest.approx(0.025 + 0.06 + 0.165)
    # Per sample: 0.1² + 2 * 0.05²; 0.62² + 0.72² + 0.1²; 0.2² + 0.18² + 0.38²; 0.66² + 2 * 0.33²
    assert found["brier"] == pytest.approx((0.015 + 0.9128 + 0.2168 + 0.6534) / 4)

    certain_and_right = train.calibration_metrics([0, 2], [[1, 0, 0], [0, 0, 1]])
    assert certain_and_right == {"ece": 0.0, "brier": 0.0}
    certain_and_wrong = train.calibration_metrics([1, 2], [[1, 0, 0], [0, 1, 0]])
    assert certain_and_wrong == {"ece": 1.0, "brier": 2.0}
    # Right as often as it says: 3 of 4 at 0.75.
    honest = train.calibration_metrics([0, 0, 0, 1], [[0.75, 0.25, 0]] * 4)
    assert honest["ece"] == pytest.approx(0.0)
    assert train.calibration_metrics([], np.zeros((0, 3))) == {"ece": 0.0, "brier": 0.0}
    with pytest.raises(ValueError):
        train.calibration_metrics([0, 1], [[1, 0, 0]])

    # compute_metrics adds them only when it has probabilities.
    assert "ece" not in train.compute_metrics(truth, [0, 0, 2, 0], LABELS)
    report = train.compute_metrics(truth, [0, 0, 2, 0], LABELS, probabilities)
    assert (report["ece"], report["brier"]) == (found["ece"], found["brier"])


def test_calibration_metrics_travel_in_classification_metrics() -> None:
    labelled_only = train.compute_metrics([0, 1], [0, 2], LABELS)
    message = metrics_to_proto(labelled_only)
    assert not message.HasField("ece") and not message.HasField("brier")
    assert metrics_from_proto(message) == labelled_only
    calibrated = train.compute_metrics([0, 1], [0, 2], LABELS, [[0.9, 0.1, 0], [0.2, 0.3, 0.5]])
    message = metrics_to_proto(calibrated)
    assert message.HasField("ece") and message.brier == pytest.approx(calibrated["brier"])
    assert metrics_from_proto(message) == calibrated


def test_kept_scores_from_before_calibration_have_no_probabilities(tmp_path: Path) -> None:
    """An evaluation store created before scores kept probabilities gains the column; its
    old rows read as labels only, so the test set's texts are predicted once more."""
    path = tmp_path / "scores.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE scores (artifact TEXT NOT NULL, text TEXT NOT NULL,"
            " label INTEGER NOT NULL, PRIMARY KEY (artifact, text)) WITHOUT ROWID"
        )
        old.execute("INSERT INTO scores VALUES ('a', 'kept', 2)")
    old.close()
    store = EvaluationStore(path)
    try:
        assert store.scores("a", ["kept", "new"]) == {"kept": Known(2)}
        store.keep("a", {"kept": Known(1, [0.2, 0.7, 0.1])})
        assert store.scores("a", ["kept"]) == {"kept": Known(1, [0.2, 0.7, 0.1])}
    finally:
        store.close()


# --------------------------------------------------------------------------- temperature


def over_confident(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """An over-confident classifier: the true class is drawn from softmax(z), so z are the
    logits of a calibrated model right about 70% of the time, and it answers 4 z instead
    (confidences of ~95%)."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0.0, 1.7, (n, 3))
    truth = (rng.random(n)[:, None] > softmax(honest).cumsum(axis=1)).sum(axis=1)
    return 4.0 * honest, truth.tolist()


def test_calibration_lowers_ece_on_a_constructed_over_confident_model() -> None:
    validation, validation_truth = over_confident(3000, 1)
    test, test_truth = over_confident(3000, 2)
    temperature = train.fit_temperature(validation, validation_truth)
    assert 3 < temperature < 5  # the 4 it was scaled up by, within sampling noise

    # The fitted temperature is the validation NLL's minimum.
    nll = train.temperature_nll(validation, validation_truth, temperature)
    for other in (1.0, temperature * 1.05, temperature / 1.05):
        assert nll < train.temperature_nll(validation, validation_truth, other)

    # On held-out data, through inference.py's predict path (an engine answering the
    # constructed logits): ECE falls substantially, and every label stays what it was.
    table = test.astype(np.float32)

    def encode(texts: list[str]) -> list[list[int]]:
        return [[int(text) + 1] for text in texts]

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(table[ids[:, 0] - 1])

    texts = [str(i) for i in range(len(test_truth))]
    raw = inference.LoadedModel(encode, forward, LABELS, 32, 0, "onnxruntime", "fp32")
    calibrated = inference.LoadedModel(
        encode, forward, LABELS, 32, 0, "onnxruntime", "fp32", temperature
    )

    def served(model: Any) -> tuple[list[int], np.ndarray]:
        predicted = inference.predict_texts(model, texts, 64)
        return (
            [LABELS.index(p["label"]) for p in predicted],
            np.array([[p["scores"][label] for label in LABELS] for p in predicted]),
        )

    raw_labels, raw_probabilities = served(raw)
    labels, probabilities = served(calibrated)
    assert labels == raw_labels == table.argmax(axis=1).tolist()
    assert probabilities == pytest.approx(softmax(table.astype(np.float64) / temperature))
    before = train.calibration_metrics(test_truth, raw_probabilities)
    after = train.calibration_metrics(test_truth, probabilities)
    print(f"\nT={temperature:.3f} test ECE {before['ece']:.4f} -> {after['ece']:.4f}")
    assert before["ece"] > 0.15
    assert after["ece"] < 0.04 and after["ece"] < before["ece"] / 4
    assert after["brier"] < before["brier"]

    # The record train.py keeps: validation NLL and ECE before and after.
    record = train.calibrate(validation, validation_truth)
    assert record["temperature"] == pytest.approx(temperature)
    assert record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"]


def test_too_small_a_validation_set_keeps_the_raw_softmax() -> None:
    logits, truth = over_confident(train.MIN_CALIBRATION_ROWS - 1, 3)
    record = train.calibrate(logits, truth)
    assert record["temperature"] == 1.0 and record["samples"] == len(truth)
    assert "fewer than 20" in record["reason"]


def test_a_temperature_that_is_not_a_positive_number_is_refused() -> None:
    assert inference.temperature_of({}) == 1.0  # an artifact from before calibration
    assert inference.temperature_of({"calibration": {"temperature": 2.5}}) == 2.5
    for bad in (0, -1, "x", None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            inference.temperature_of({"calibration": {"temperature": bad}})


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """A tiny training run and the data it trained on (40 validation rows to fit on)."""
    data = tmp_path_factory.mktemp("data")
    build_dataset(data, limit_per_split={"train": 64, "validation": 40, "test": 32})
    run = run_train(tmp_path_factory.mktemp("job"), data, {"preset": "tiny", "max_steps": 10})
    assert run.returncode == 0, run.stdout + run.stderr
    return run, data


def raw_logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The saved weights' logits, one text at a time, straight from transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    max_length = json.loads((model_dir / "labels.json").read_text())["max_length"]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**encoded).logits[0].double().numpy())
    return np.array(rows)


def test_a_training_run_records_a_temperature_and_serves_with_it(
    tiny_run: tuple[Run, Path], tmp_path: Path
) -> None:
    run, data = tiny_run
    serving = json.loads((run.model_dir / "labels.json").read_text())
    metrics = run.metrics()
    calibration = serving["calibration"]
    assert calibration == metrics["calibration"]
    assert calibration["samples"] == 40 and "reason" not in calibration
    temperature = calibration["temperature"]
    assert 0 < temperature != 1.0
    assert calibration["nll_after"] <= calibration["nll_before"]

    test = train.read_channel(data / "test", "test")
    logits = raw_logits(run.model_dir, test.texts)

    # Served scores are softmax(logits / T) of the very weights; labels the raw argmax.
    torch_engine = inference.load_model(run.model_dir, engine="torch")
    assert torch_engine.temperature == pytest.approx(temperature)
    predicted = inference.predict_texts(torch_engine, test.texts)
    scores = np.array([[p["scores"][label] for label in LABELS] for p in predicted])
    assert scores == pytest.approx(softmax(logits / temperature), abs=1e-5)
    assert [LABELS.index(p["label"]) for p in predicted] == logits.argmax(axis=1).tolist()
    # The recorded test ECE and Brier are those of what serves; the record keeps the raw
    # model's beside them.
    served = train.calibration_metrics(test.labels, scores)
    assert metrics["test"]["ece"] == pytest.approx(served["ece"], abs=1e-5)
    assert metrics["test"]["brier"] == pytest.approx(served["brier"], abs=1e-5)
    assert calibration["test_ece_after"] == metrics["test"]["ece"]
    uncalibrated = train.calibration_metrics(test.labels, softmax(logits))
    assert calibration["test_ece_before"] == pytest.approx(uncalibrated["ece"], abs=1e-5)

    # The ONNX engine reads the same temperature from labels.json.
    onnx_engine = inference.load_model(run.model_dir)
    assert onnx_engine.engine == "onnxruntime"
    assert onnx_engine.temperature == pytest.approx(temperature)
    onnx_logits = inference.predict_logits(onnx_engine, test.texts)
    onnx_scores = [
        [p["scores"][label] for label in LABELS]
        for p in inference.predict_texts(onnx_engine, test.texts)
    ]
    assert np.array(onnx_scores) == pytest.approx(softmax(onnx_logits / temperature), abs=1e-6)

    # An artifact from before calibration (no record) serves the raw softmax.
    old = tmp_path / "old"
    shutil.copytree(run.model_dir, old)
    (old / "labels.json").write_text(
        json.dumps({k: v for k, v in serving.items() if k != "calibration"})
    )
    legacy = inference.load_model(old, engine="torch")
    assert legacy.temperature == 1.0
    legacy_scores = [
        [p["scores"][label] for label in LABELS]
        for p in inference.predict_texts(legacy, test.texts)
    ]
    assert np.array(legacy_scores) == pytest.approx(softmax(logits), abs=1e-5)


# --------------------------------------------------------------------------- the gate


TRUTH = [i % 3 for i in range(600)]
FEEDBACK = [i % 3 for i in range(150)]


def noisy(truth: list[int], accuracy: float, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [t if rng.random() < accuracy else int((t + rng.integers(1, 3)) % 3) for t in truth]


def saying(predictions: list[int], confidence: float) -> list[list[float]]:
    """Probabilities that give each predicted class ``confidence``, the rest alike."""
    rest = (1 - confidence) / 2
    return [[confidence if k == p else rest for k in range(3)] for p in predictions]


def test_the_gate_refuses_a_candidate_whose_test_ece_rises_beyond_the_tolerance() -> None:
    assert RULES.ece_tolerance == 0.02
    guesses = noisy(TRUTH, 0.8, 1)
    accuracy = float(np.mean(np.array(guesses) == np.array(TRUTH)))
    # A real gain on the feedback (out of fold: labels only, no ECE there).
    feedback = compare(
        "feedback", FEEDBACK, noisy(FEEDBACK, 0.72, 3), noisy(FEEDBACK, 0.55, 4), folds=4
    )
    assert feedback.candidate_ece is None

    def on_test(candidate_confidence: float, baseline_confidence: float = accuracy) -> Any:
        # The same labels as the baseline, which by default says exactly how often it is
        # right: its ECE is 0.
        return compare(
            "test", TRUTH, guesses, guesses,
            candidate_probabilities=saying(guesses, candidate_confidence),
            baseline_probabilities=saying(guesses, baseline_confidence),
        )  # fmt: skip

    worse = on_test(accuracy + 0.15)
    assert worse.baseline_ece == pytest.approx(0.0, abs=1e-9)
    assert worse.candidate_ece == pytest.approx(0.15)
    assert worse.delta_macro_f1 == 0.0
    refused = decide(worse, feedback, "v1", RULES)
    assert refused.decision == "rejected"
    assert refused.reason == "test ECE rose 15.0 points (tolerance 2.0)"

    within = decide(on_test(accuracy + 0.015), feedback, "v1", RULES)
    assert within.decision == "promoted", within.reason
    assert within.reason.endswith("ECE +1.5 points")
    better = decide(on_test(accuracy, accuracy + 0.1), feedback, "v1", RULES)
    assert better.decision == "promoted", better.reason
    assert better.reason.endswith("ECE -10.0 points")

    # The decision as the registry stores it and the API shows it: both models' ECE and
    # the tolerance, through the GateDecision message and back.
    recorded = refused.as_dict()
    assert recorded["ece_tolerance"] == 0.02
    assert recorded["test"]["candidate_ece"] == pytest.approx(0.15)
    message = json_format.ParseDict(recorded, common_pb2.GateDecision())
    assert message.test.candidate_brier == pytest.approx(worse.candidate_brier)
    assert not message.feedback.HasField("candidate_ece")
    assert _comparison(message.test) == worse
    assert _comparison(message.feedback) == feedback
    assert comparison_to_proto(worse) == message.test
    # Without probabilities (labels only) the rule has nothing to judge.
    labels_only = compare("test", TRUTH, guesses, guesses)
    assert labels_only.candidate_ece is None
    assert decide(labels_only, feedback, "v1", RULES).decision == "promoted"
