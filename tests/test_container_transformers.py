"""train.py with the transformers of SageMaker's Hugging Face training container (4.x; the
services use 5.x): it trains, exports the checked ONNX graph, and what it writes serves here
through both engines. The container's version is the one aws/config.py asks the SDK for;
`make container-transformers` installs it beside the venv's packages, and this test puts
it first on train.py's path (torch stays the venv's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sentiloop.aws.config import SDK_IMAGE_VERSIONS
from sentiloop.core.scripts import load_script
from sentiloop.data.vader import build_dataset

ROOT = Path(__file__).resolve().parents[1]
VERSION = SDK_IMAGE_VERSIONS["training"]["version"]
PACKAGES = Path(sys.prefix) / f"transformers-{VERSION}"


def test_train_py_runs_with_the_training_containers_transformers(tmp_path: Path) -> None:
    assert PACKAGES.is_dir(), f"{PACKAGES} is missing: run `make container-transformers`"
    data = tmp_path / "data"
    build_dataset(data, limit_per_split={"train": 48, "validation": 24, "test": 24})
    model_dir, output = tmp_path / "model", tmp_path / "output" / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SENTILOOP_"))}
    env |= {"PYTHONPATH": str(PACKAGES), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "sagemaker_scripts" / "train.py"),
            *("--train", str(data / "train"), "--validation", str(data / "validation")),
            *("--test", str(data / "test"), "--model-dir", str(model_dir)),
            *("--output-data-dir", str(output), "--preset", "tiny", "--max_steps", "5"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["versions"]["transformers"] == VERSION
    assert metrics["serving"]["engine"] == "onnxruntime", metrics["serving"]

    assert metrics["serving"]["max_difference"] <= load_script("train").ONNX_TOLERANCE

    # The artifact a 4.x container wrote serves here (transformers 5) through both engines:
    # torch predicts the test set as train.py did under 4.x, and the ONNX graph (when it
    # serves at fp32) answers like torch.
    train, inference = load_script("train"), load_script("inference")
    test = train.read_channel(data / "test", "test")
    torch = inference.load_model(model_dir, engine="torch")
    predicted = inference.predict_texts(torch, test.texts)
    guesses = [train.LABELS.index(p["label"]) for p in predicted]
    probabilities = [[p["scores"][label] for label in train.LABELS] for p in predicted]
    here = train.compute_metrics(test.labels, guesses, train.LABELS, probabilities)
    recorded = metrics["test"]
    for name in ("ece", "brier"):  # the calibrated model's, within float noise across versions
        assert abs(here.pop(name) - recorded.pop(name)) <= 1e-4
    assert here == recorded
    onnx = inference.load_model(model_dir)
    assert onnx.engine == "onnxruntime"
    if onnx.precision == "fp32":
        for ours, theirs in zip(
            inference.predict_texts(onnx, test.texts),
            inference.predict_texts(torch, test.texts),
            strict=True,
        ):
            for label, score in ours["scores"].items():
                assert abs(score - theirs["scores"][label]) <= train.ONNX_TOLERANCE
    else:
        assert metrics["serving"]["int8"]["accepted"]
