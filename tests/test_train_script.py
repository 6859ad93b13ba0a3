"""sagemaker_scripts/train.py under SageMaker's contract, and inference.py on what it wrote.

Training runs use the "tiny" preset (a randomly initialised 2-layer BERT, a few seconds on a
CPU): only the mechanics are under test here, not the accuracy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sentiloop.data.vader import build_dataset

SCRIPTS = Path(__file__).resolve().parent.parent / "sagemaker_scripts"
LIMITS = {"train": 64, "validation": 32, "test": 32}
LABELS = ["negative", "neutral", "positive"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"sm_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


train = _load("train")
inference = _load("inference")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    model_dir: Path
    output_data_dir: Path

    @property
    def failure_file(self) -> Path:
        return self.output_data_dir.parent / "failure"

    def metrics(self) -> dict[str, Any]:
        return dict(json.loads((self.model_dir / "metrics.json").read_text()))


def run_train(
    root: Path,
    data: Path,
    hyperparameters: dict[str, Any],
    extra_args: list[str] | None = None,
    test_channel: bool = True,
) -> Run:
    """train.py as SageMaker starts it: paths only through SM_* variables."""
    root.mkdir(parents=True, exist_ok=True)
    hps_file = root / "hyperparameters.json"
    # SageMaker writes every value as a string (its SDK JSON-encodes them first).
    hps_file.write_text(json.dumps({k: json.dumps(v) for k, v in hyperparameters.items()}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SENTILOOP_", "CUDA"))}
    env.update(
        HF_HUB_OFFLINE="1",
        SM_CHANNEL_TRAIN=str(data / "train"),
        SM_CHANNEL_VALIDATION=str(data / "validation"),
        SM_MODEL_DIR=str(root / "model"),
        SM_OUTPUT_DATA_DIR=str(root / "output" / "data"),
    )
    if test_channel:
        env["SM_CHANNEL_TEST"] = str(data / "test")
    command = [sys.executable, str(SCRIPTS / "train.py"), "--hyperparameters-file", str(hps_file)]
    done = subprocess.run(
        [*command, *(extra_args or [])],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return Run(done.returncode, done.stdout, done.stderr, root / "model", root / "output" / "data")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    build_dataset(folder, limit_per_split=LIMITS)
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Run:
    run = run_train(tmp_path_factory.mktemp("job"), data, {"preset": "tiny", "seed": 7})
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def test_progress_lines_parse(tiny_run: Run) -> None:
    parsed = [p for p in map(train.parse_line, tiny_run.stdout.splitlines()) if p is not None]
    statuses = [p["status"] for p in parsed if p["kind"] == "status"]
    assert statuses == [
        "Starting",
        "Downloading",
        "Training",
        "Evaluating",
        "Uploading",
        "Completed",
    ]
    progress = [p for p in parsed if p["kind"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 30  # tiny: max_steps 30
    assert [p["step"] for p in progress] == sorted({p["step"] for p in progress})
    assert all(p["loss"] > 0 and p["epoch"] > 0 for p in progress)
    assert progress[-1]["epoch"] == pytest.approx(30 / 4)  # 64 examples in batches of 16
    metrics = {p["name"]: p["value"] for p in parsed if p["kind"] == "metric"}
    assert set(metrics) == {
        "validation_accuracy",
        "validation_macro_f1",
        "validation_ece",
        "validation_brier",
        "test_accuracy",
        "test_macro_f1",
        "test_ece",
        "test_brier",
        "train_loss",
    }
    stored = tiny_run.metrics()
    assert metrics["test_accuracy"] == pytest.approx(stored["test"]["accuracy"], abs=1e-6)
    assert metrics["train_loss"] == pytest.approx(stored["train_loss"], abs=1e-6)

    # SageMaker's metric_definitions find the same values in the same log.
    for definition in train.METRIC_DEFINITIONS:
        found = re.findall(definition["Regex"], tiny_run.stdout)
        assert found, definition
        if definition["Name"] in metrics:
            assert float(found[-1]) == pytest.approx(metrics[definition["Name"]])
    losses = re.findall(
        next(d["Regex"] for d in train.METRIC_DEFINITIONS if d["Name"] == "loss"), tiny_run.stdout
    )
    assert len(losses) == len(progress)


def test_parse_line_grammar() -> None:
    assert train.parse_line("[sentiloop] status=Training\n") == {
        "kind": "status",
        "status": "Training",
        "reason": None,
    }
    assert train.parse_line("2026-01-01 algo-1 | [sentiloop] status=Failed reason=bad: x=1") == {
        "kind": "status",
        "status": "Failed",
        "reason": "bad: x=1",
    }
    assert train.parse_line(
        "[sentiloop] progress step=3 total_steps=10 epoch=0.3000 loss=1.5e-03"
    ) == {"kind": "progress", "step": 3, "total_steps": 10, "epoch": 0.3, "loss": 0.0015}
    assert train.parse_line("[sentiloop] metric test_macro_f1=0.75") == {
        "kind": "metric",
        "name": "test_macro_f1",
        "value": 0.75,
    }
    for other in ("", "hello", "[sentiloop] status=Sleeping", "[sentiloop] metric x=abc"):
        assert train.parse_line(other) is None


def test_metrics_json_is_complete_and_consistent(tiny_run: Run) -> None:
    metrics = tiny_run.metrics()
    assert metrics == json.loads((tiny_run.output_data_dir / "metrics.json").read_text())
    assert metrics["dataset_sizes"] == LIMITS
    assert metrics["hyperparameters"]["preset"] == "tiny"
    assert metrics["hyperparameters"]["seed"] == 7
    assert metrics["total_steps"] == 30 and metrics["train_seconds"] > 0
    for split in ("validation", "test"):
        report = metrics[split]
        matrix = report["confusion_matrix"]
        assert report["confusion_matrix_labels"] == LABELS
        assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
        assert sum(map(sum, matrix)) == report["total_samples"] == LIMITS[split]
        assert report["correct_predictions"] == sum(matrix[i][i] for i in range(3))
        assert report["accuracy"] == pytest.approx(report["correct_predictions"] / LIMITS[split])
        assert 0 <= report["macro_f1"] <= 1
        assert set(report["per_class"]) == set(LABELS)
        for i, label in enumerate(LABELS):
            assert report["per_class"][label]["support"] == sum(matrix[i])
            assert set(report["per_class"][label]) == {"precision", "recall", "f1", "support"}


def test_model_folder(tiny_run: Run) -> None:
    names = {p.name for p in tiny_run.model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "labels.json"} <= names
    assert {"metrics.json", "code"} <= names
    assert (tiny_run.model_dir / "code" / "inference.py").is_file()
    assert "onnxruntime" in (tiny_run.model_dir / "code" / "requirements.txt").read_text()
    # What serving uses: the label order and the max length training used (tiny: 32), and
    # the ONNX graph that was checked against torch (fp32, or int8 when that passed).
    serving = json.loads((tiny_run.model_dir / "labels.json").read_text())
    assert serving["labels"] == LABELS and serving["max_length"] == 32
    onnx = serving["onnx"]
    assert (tiny_run.model_dir / onnx["file"]).is_file()
    assert onnx["precision"] == ("int8" if onnx["int8"]["accepted"] else "fp32")
    assert onnx["max_difference"] <= train.ONNX_TOLERANCE
    assert onnx["checked_texts"] == LIMITS["test"]
    assert len(list(tiny_run.model_dir.glob("*.onnx"))) == 1  # only the graph that serves
    assert tiny_run.metrics()["serving"] == {"engine": "onnxruntime", **onnx}
    config = json.loads((tiny_run.model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 32
    root = tiny_run.model_dir.parent
    pickles = [p for p in root.rglob("*") if p.suffix in (".bin", ".pkl", ".pt", ".pth")]
    assert not pickles
    assert not tiny_run.failure_file.exists()


def test_inference_handler_end_to_end(tiny_run: Run) -> None:
    model = inference.model_fn(str(tiny_run.model_dir))
    texts = ["i love it!", "it broke after a day and support never answered my emails.", "ok."]
    data = inference.input_fn(json.dumps({"texts": texts}).encode(), "application/json")
    assert data == texts
    predictions = inference.predict_fn(data, model)
    body = json.loads(inference.output_fn(predictions, "application/json"))
    assert len(body["predictions"]) == 3
    for prediction in body["predictions"]:
        assert prediction["label"] in LABELS
        assert set(prediction["scores"]) == set(LABELS)
        assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["confidence"] == max(prediction["scores"].values())
        assert prediction["scores"][prediction["label"]] == prediction["confidence"]
    # Length-sorted batching gives back the request order: same answers one by one (int8
    # serves only when batch-invariant within its tolerance).
    tolerance = train.INT8_BATCH_TOLERANCE if model.precision == "int8" else 1e-5
    for text, batched in zip(texts, predictions, strict=True):
        single = inference.predict_texts(model, [text])[0]
        assert single["label"] == batched["label"]
        for label in LABELS:
            assert single["scores"][label] == pytest.approx(batched["scores"][label], abs=tolerance)
    one = inference.input_fn('{"text": "great player."}', "application/json; charset=utf-8")
    assert one == ["great player."]


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        ('{"text": "x"}', "text/csv", "unsupported content type"),
        ("{not json", "application/json", "not valid JSON"),
        ('{"texts": []}', "application/json", "non-empty list"),
        ('{"texts": ["ok", 3]}', "application/json", '"texts"[1] must be a non-empty string'),
        ('{"text": "   "}', "application/json", "non-empty string"),
        ('["a"]', "application/json", '"text" or "texts"'),
        (b"\xff\xfe", "application/json", "not UTF-8"),
    ],
)
def test_input_fn_rejects_bad_requests(body: str | bytes, content_type: str, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        inference.input_fn(body, content_type)


def test_same_seed_same_model(tmp_path: Path, data: Path, tiny_run: Run) -> None:
    again = run_train(tmp_path, data, {"preset": "tiny", "seed": 7})
    assert again.returncode == 0, again.stderr

    def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            k: comparable(v) if isinstance(v, dict) else v
            for k, v in metrics.items()
            if not k.endswith("_seconds")
        }

    assert comparable(again.metrics()) == comparable(tiny_run.metrics())
    digest = [
        hashlib.sha256((run.model_dir / "model.safetensors").read_bytes()).hexdigest()
        for run in (again, tiny_run)
    ]
    assert digest[0] == digest[1]


def test_retrain_from_an_earlier_model(tmp_path: Path, data: Path, tiny_run: Run) -> None:
    """init_model_dir continues from a trained model; arguments override the file; without
    a test channel metrics.json has validation only; sample_weight/source columns work."""
    weighted = tmp_path / "weighted"
    (weighted / "train").mkdir(parents=True)
    rows = (data / "train" / "train.csv").read_text().splitlines()
    lines = [rows[0] + ",sample_weight,source"]
    lines += [
        f"{row},{i % 3},{'feedback' if i % 2 else 'original'}" for i, row in enumerate(rows[1:])
    ]
    (weighted / "train" / "train.csv").write_text("\n".join(lines) + "\n")
    (weighted / "validation").symlink_to(data / "validation")
    run = run_train(
        tmp_path / "job",
        weighted,
        {"preset": "tiny", "max_steps": 30, "feedback_weight": 2},
        extra_args=["--init_model_dir", str(tiny_run.model_dir), "--max_steps", "3"],
        test_channel=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    metrics = run.metrics()
    assert metrics["total_steps"] == 3
    assert metrics["hyperparameters"]["init_model_dir"] == str(tiny_run.model_dir)
    assert metrics["hyperparameters"]["feedback_weight"] == 2.0
    assert metrics["feedback_rows"]["train"] == 32
    assert "validation" in metrics and "test" not in metrics
    assert "test_accuracy" not in run.stdout


def test_sample_weights_are_read(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        "label,text,sample_weight,source\n"
        "Positive,good,2.5,\nNEGATIVE,bad,,feedback\nneutral,meh,0,feedback\n"
    )
    split = train.read_channel(tmp_path, "train", feedback_weight=3.0)
    assert split.texts == ["good", "bad", "meh"]
    assert split.labels == [2, 0, 1]
    assert split.weights == [2.5, 3.0, 0.0]
    assert split.feedback_rows == 2


@pytest.mark.parametrize(
    ("csv_text", "hyperparameters", "reason"),
    [
        ("text,label\nfine,great\n", {}, "unknown label 'great'"),
        ("text,sentiment\nfine,positive\n", {}, "missing column(s) label"),
        ("", {}, "is empty"),
        ("text,label\n", {}, "has no examples"),
        ("text,label\n,positive\n", {}, "empty text"),
        ("text,label,sample_weight\nok,positive,-1\n", {}, "sample_weight '-1'"),
        ("text,label\nok,positive\n", {"epochs": "many"}, "hyperparameter epochs='many'"),
        (
            "text,label\nok,positive\n",
            {"learning_rat": 1},
            "unknown hyperparameter(s): learning_rat",
        ),
    ],
)
def test_bad_input_fails_with_a_reason(
    tmp_path: Path, data: Path, csv_text: str, hyperparameters: dict[str, Any], reason: str
) -> None:
    bad = tmp_path / "data"
    (bad / "train").mkdir(parents=True)
    (bad / "train" / "train.csv").write_text(csv_text)
    (bad / "validation").symlink_to(data / "validation")
    run = run_train(
        tmp_path / "job", bad, {"preset": "tiny", **hyperparameters}, test_channel=False
    )
    assert run.returncode != 0
    failed = [line for line in run.stdout.splitlines() if "status=Failed" in line]
    assert len(failed) == 1
    parsed = train.parse_line(failed[0])
    assert parsed is not None and parsed["status"] == "Failed"
    assert reason in parsed["reason"]
    assert reason in run.failure_file.read_text()
    assert not (run.model_dir / "model.safetensors").exists()


def test_missing_hyperparameters_file_fails(tmp_path: Path, data: Path) -> None:
    run = run_train(tmp_path, data, {}, extra_args=["--hyperparameters-file", "nowhere.json"])
    assert run.returncode == 1
    assert "cannot read hyperparameters file nowhere.json" in run.failure_file.read_text()


def test_hyperparameter_resolution() -> None:
    resolve = train.resolve_hyperparameters
    hps = resolve({"preset": "tiny", "epochs": "2", "max_steps": ""}, {})
    assert hps["preset"] == "tiny" and hps["epochs"] == 2.0 and hps["max_steps"] is None
    assert hps["learning_rate"] == 1e-3 and hps["batch_size"] == 16
    hps = resolve({"batch_size": "8", "seed": "3"}, {"batch_size": "4"})
    assert hps["preset"] == "minilm" and hps["batch_size"] == 4 and hps["seed"] == 3
    assert hps["base_model"]  # the packaged MiniLM folder (or its hub id)
    with pytest.raises(train.TrainingError, match="preset"):
        resolve({"preset": "huge"}, {})
    with pytest.raises(train.TrainingError, match="warmup_ratio"):
        resolve({}, {"warmup_ratio": "1.5"})


def test_compute_metrics_by_hand() -> None:
    report = train.compute_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], LABELS)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["correct_predictions"] == 4 and report["total_samples"] == 6
    negative = report["per_class"]["negative"]
    assert (negative["precision"], negative["recall"], negative["support"]) == (0.5, 0.5, 2)
    positive = report["per_class"]["positive"]
    assert positive["precision"] == 1.0 and positive["recall"] == pytest.approx(2 / 3)
    f1s = [0.5, 2 * 0.5 * 1 / 1.5, 2 * 1 * (2 / 3) / (1 + 2 / 3)]
    assert report["macro_f1"] == pytest.approx(sum(f1s) / 3)
    never = train.compute_metrics([0, 0], [0, 0], LABELS)
    assert never["per_class"]["neutral"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }


def _feedback_split(originals: int, feedback: int) -> Any:
    split = train.Split("train")
    for i in range(originals + feedback):
        split.texts.append(f"text {i}")
        split.labels.append(i % 3)
        split.weights.append(1.0)
        split.is_feedback.append(i >= originals)
    return split


def test_feedback_folds_are_stratified_disjoint_and_seeded() -> None:
    split = _feedback_split(originals=10, feedback=31)
    folds = train.feedback_folds(split, 4, seed=13)
    rows = [i for fold in folds for i in fold]
    assert sorted(rows) == list(range(10, 41))  # every feedback row once, no original
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for fold in folds:
        counts = [sum(split.labels[i] == label for i in fold) for label in range(3)]
        assert max(counts) - min(counts) <= 1, counts  # each fold has every label
    assert train.feedback_folds(split, 4, seed=13) == folds
    assert train.feedback_folds(split, 4, seed=14) != folds


def test_a_fold_model_never_trains_on_its_fold_and_replays_a_sample() -> None:
    split = _feedback_split(originals=100, feedback=40)
    hps = {"replay_ratio": 0.5, "seed": 13, "balance_feedback": False}
    for fold in train.feedback_folds(split, 4, seed=13):
        rows = train.fold_training_split(split, fold, hps)
        held_out = {split.texts[i] for i in fold}
        assert not held_out & set(rows.texts)
        assert rows.feedback_rows == 30 and len(rows.texts) == 30 + 15
    final = train.with_replay(split, 0.5, 13)
    assert final.feedback_rows == 40 and len(final.texts) == 60
    assert train.with_replay(split, 0.5, 13).texts == final.texts  # seeded
    assert train.with_replay(split, None, 13) is split  # no ratio: every row
    assert len(train.with_replay(split, 10.0, 13).texts) == 140  # never more than there are


def test_balanced_feedback_weighs_each_label_alike() -> None:
    split = _feedback_split(originals=6, feedback=0)
    for label in [1] * 8 + [0] * 2 + [2] * 2:  # a new domain where most labels are neutral
        split.texts.append(f"feedback {len(split.texts)}")
        split.labels.append(label)
        split.weights.append(2.0)  # feedback_weight already applied
        split.is_feedback.append(True)
    balanced = train.balance_feedback(split)
    totals = [
        sum(
            w
            for w, y, f in zip(balanced.weights, balanced.labels, balanced.is_feedback, strict=True)
            if f and y == c
        )
        for c in range(3)
    ]
    assert totals == pytest.approx([8.0, 8.0, 8.0])  # the feedback's total weight (24) kept
    assert balanced.weights[:6] == split.weights[:6]  # original rows untouched
    hps = {"replay_ratio": None, "seed": 13, "balance_feedback": False}
    assert train.training_split(split, hps).weights == split.weights


def test_cross_fitting_predicts_every_feedback_row_out_of_fold(tmp_path: Path, data: Path) -> None:
    channels = tmp_path / "data"
    (channels / "train").mkdir(parents=True)
    rows = (data / "train" / "train.csv").read_text().splitlines()
    lines = [rows[0] + ",source"] + [
        f"{row},{'feedback' if i < 24 else 'original'}" for i, row in enumerate(rows[1:])
    ]
    (channels / "train" / "train.csv").write_text("\n".join(lines) + "\n")
    (channels / "validation").symlink_to(data / "validation")
    (channels / "test").symlink_to(data / "test")
    run = run_train(
        tmp_path / "job",
        channels,
        {"preset": "tiny", "max_steps": 3, "cross_fit_folds": 3, "replay_ratio": 1},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    import csv

    with (run.model_dir / "crossfit.csv").open(newline="") as handle:
        crossfit = list(csv.DictReader(handle))
    feedback = list(csv.DictReader(lines[: 24 + 1]))
    assert sorted((r["text"], r["label"]) for r in crossfit) == sorted(
        (r["text"], r["label"].lower()) for r in feedback
    )
    assert {r["fold"] for r in crossfit} == {"0", "1", "2"}
    assert {r["prediction"] for r in crossfit} <= set(LABELS)
    metrics = run.metrics()
    assert metrics["cross_fit_folds"] == 3
    assert metrics["cross_fit"]["total_samples"] == 24
    assert metrics["total_steps"] == 4 * 3  # three fold models and the final one
    assert metrics["dataset_sizes"]["train"] == 48  # 24 feedback + 24 replayed originals
    progress = [
        p for p in map(train.parse_line, run.stdout.splitlines()) if p and p["kind"] == "progress"
    ]
    assert progress[-1]["step"] == progress[-1]["total_steps"] == 12


# --- The engines serving what train.py wrote -------------------------------------------------

SENTENCES = [
    "i love it!",
    "it broke after a day and support never answered my emails.",
    "ok.",
    "the battery lasts for two days, which is more than i expected from a phone this cheap.",
    "terrible.",
    "not bad at all, though the case scratches easily",
]


def _scores(model: Any, texts: list[str], batch_size: int = 32) -> list[list[float]]:
    return [
        [p["scores"][label] for label in LABELS]
        for p in inference.predict_texts(model, texts, batch_size)
    ]


def _copy_model(source: Path, target: Path, drop_onnx: bool = False) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and not (drop_onnx and path.suffix == ".onnx"):
            (target / path.name).write_bytes(path.read_bytes())
    if drop_onnx:  # what an artifact from before the ONNX export looks like
        serving = json.loads((target / "labels.json").read_text())
        del serving["onnx"]
        (target / "labels.json").write_text(json.dumps(serving))
    return target


def test_onnx_export_answers_like_torch(tmp_path: Path, data: Path, tiny_run: Run) -> None:
    """export_onnx's check, redone here on other sentences: the fp32 graph's probabilities
    are torch's within the tolerance, label for label."""
    folder = _copy_model(tiny_run.model_dir, tmp_path / "model", drop_onnx=True)
    torch_model = inference.model_fn(folder)
    assert torch_model.engine == "torch"
    check = train.Split("test", SENTENCES, [0] * len(SENTENCES), [1.0] * len(SENTENCES))
    record = train.export_onnx(folder, torch_model, check, 4, with_int8=False)
    assert record["engine"] == "onnxruntime" and record["precision"] == "fp32", record
    train._record_serving(folder, {k: v for k, v in record.items() if k != "engine"})
    onnx_model = inference.model_fn(folder)
    assert (onnx_model.engine, onnx_model.precision) == ("onnxruntime", "fp32")
    texts = train.read_channel(data / "validation", "validation").texts
    for ours, theirs in zip(_scores(onnx_model, texts), _scores(torch_model, texts), strict=True):
        assert ours == pytest.approx(theirs, abs=train.ONNX_TOLERANCE)


def test_old_torch_only_artifact_still_serves(tmp_path: Path, tiny_run: Run) -> None:
    folder = _copy_model(tiny_run.model_dir, tmp_path / "model", drop_onnx=True)
    model = inference.model_fn(folder)
    assert (model.engine, model.precision) == ("torch", "fp32")
    predictions = inference.predict_texts(model, SENTENCES)
    assert [p["label"] in LABELS for p in predictions] == [True] * len(SENTENCES)


def test_served_engine_is_batch_invariant(tiny_run: Run) -> None:
    """What the dynamic batcher relies on: a text gets the same answer alone and inside any
    batch of mixed lengths (here unsorted batches of 2, 3 and all)."""
    model = inference.model_fn(tiny_run.model_dir)
    assert model.engine == "onnxruntime"
    alone = [_scores(model, [text])[0] for text in SENTENCES]
    for size in (2, 3, len(SENTENCES)):
        batched = [
            row
            for start in range(0, len(SENTENCES), size)
            for row in _scores(model, SENTENCES[start : start + size], size)
        ]
        for one, many in zip(alone, batched, strict=True):
            assert many == pytest.approx(one, abs=train.INT8_BATCH_TOLERANCE)
            assert max(range(3), key=many.__getitem__) == max(range(3), key=one.__getitem__)


def test_int8_verdict_refuses_a_batch_dependent_engine() -> None:
    """Dynamic int8 rescales activations per batch: an engine whose answers move with the
    batch is refused even when it agrees with fp32 alone."""
    import numpy as np

    def engine(drift: float) -> Any:
        def forward(ids: Any, mask: Any) -> Any:
            logits = np.stack([ids.sum(1) % 5, ids.sum(1) % 3, ids.sum(1) % 7], 1)
            return (logits + drift * (len(ids) - 1) * np.arange(3)).astype(np.float32)

        def encode(texts: list[str]) -> list[list[int]]:
            return [[len(word) for word in text.split()] for text in texts]

        return inference.LoadedModel(encode, forward, LABELS, 32, 0, "onnxruntime", "x")

    truth = [0, 1, 2, 0, 1, 2]
    fp32 = train._probabilities(inference, engine(0), SENTENCES, 3)
    same = train._int8_verdict(inference, fp32, engine(0), SENTENCES, truth, 3)
    assert same["accepted"] and same["argmax_agreement"] == 1.0, same
    moving = train._int8_verdict(inference, fp32, engine(0.5), SENTENCES, truth, 3)
    assert not moving["accepted"] and "not batch-invariant" in moving["reason"], moving


_TOOLKIT_SCRIPT = """
import json, sys
from sagemaker_inference.default_handler_service import DefaultHandlerService

class Requests:
    def __init__(self, headers): self.headers = headers
    def get_request_properties(self): return self.headers

class Context:
    # The slice of multi-model-server's context the handler service reads and writes.
    def __init__(self, model_dir, content_type):
        self.system_properties = {"model_dir": model_dir}
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        self.request_processor = [Requests(headers)]
        self.status = 200
    def set_response_status(self, code, phrase): self.status = code
    def set_response_content_type(self, index, content_type): pass

model_dir, requests = sys.argv[1], json.loads(sys.stdin.read())
service = DefaultHandlerService()
service.initialize(Context(model_dir, "application/json"))
answers = []
for body, content_type in requests:
    context = Context(model_dir, content_type)
    (answer,) = service.handle([{"body": body.encode()}], context)
    answers.append({"status": context.status, "body": answer})
print(json.dumps({"answers": answers, "torch": "torch" in sys.modules,
                  "transformers": "transformers" in sys.modules}))
"""


def test_sagemaker_serving_toolkit_serves_the_artifact(tiny_run: Run) -> None:
    """inference.py inside SageMaker's own serving toolkit (sagemaker-inference's
    DefaultHandlerService, as the containers run it, with the model server's context played
    by a small class), in a process of its own like a container's worker: the answers equal
    local serving, bad requests are 400s, and neither torch nor transformers is imported."""
    requests = [
        (json.dumps({"texts": SENTENCES}), "application/json"),
        (json.dumps({"text": SENTENCES[0]}), "application/json"),
        ("{not json", "application/json"),
        (json.dumps({"texts": []}), "application/json"),
        (json.dumps({"text": "x"}), "text/csv"),
    ]
    env = {
        **os.environ,
        "SAGEMAKER_PROGRAM": "inference.py",
        # The container puts the artifact's code/ folder on the worker's path.
        "PYTHONPATH": str(tiny_run.model_dir / "code"),
    }
    done = subprocess.run(
        [sys.executable, "-c", _TOOLKIT_SCRIPT, str(tiny_run.model_dir)],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert not result["torch"] and not result["transformers"]
    answers = result["answers"]
    assert [a["status"] for a in answers] == [200, 200, 400, 400, 400], answers
    local = inference.predict_texts(inference.model_fn(tiny_run.model_dir), SENTENCES)
    served = json.loads(answers[0]["body"])["predictions"]
    assert [p["label"] for p in served] == [p["label"] for p in local]
    for ours, theirs in zip(served, local, strict=True):
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-6)
    assert json.loads(answers[1]["body"])["predictions"][0]["label"] == local[0]["label"]
    assert "not valid JSON" in answers[2]["body"]
    assert "non-empty list" in answers[3]["body"]
    assert "unsupported content type" in answers[4]["body"]
