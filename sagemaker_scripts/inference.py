"""SageMaker inference handler for models trained by ``train.py``.

The SageMaker serving containers call ``model_fn`` once, then ``input_fn`` -> ``predict_fn``
-> ``output_fn`` per request. Sentiloop's InferenceService uses the same file in-process
(``model_fn`` + :func:`predict_texts`), so local serving and a SageMaker endpoint answer
alike. Like ``train.py`` it must not import ``sentiloop``.

Two engines behind one predict path (tokenize -> pad -> forward -> softmax(logits / T)):
- ONNX Runtime, when the artifact holds ``model.onnx`` (train.py exports it and checks it
  against torch) and ``onnxruntime`` is installed: tokenized by the ``tokenizers`` library,
  so neither torch nor transformers is imported (a serving process of ~100 MB instead of
  ~400 MB, and no dependency on the container's transformers major version);
- torch + transformers otherwise (older artifacts, or engine "torch").

T is the temperature train.py fitted on the validation set (labels.json's ``calibration``
record; 1 for artifacts without one): it makes the confidences calibrated and never changes
which label wins.

Request: ``{"text": "..."}`` or ``{"texts": ["...", ...]}`` as ``application/json``.
Response: ``{"predictions": [{"label", "confidence", "scores": {label: p}}, ...]}``, one per
text, in request order. A bad request raises :class:`BadRequest`, which SageMaker's serving
toolkit answers with HTTP 400 (a plain exception would be a 500 there).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_LABELS = ["negative", "neutral", "positive"]
MAX_LENGTH = 128
BATCH_SIZE = 32
JSON_TYPES = ("application/json", "application/x-json")
ONNX_FILE = "model.onnx"
ENGINES = ("auto", "onnxruntime", "torch")

try:  # inside SageMaker's serving containers (and the test that plays one)
    from sagemaker_inference.errors import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
        GenericInferenceToolkitError as _ToolkitError,
    )
except ImportError:  # elsewhere a BadRequest is a plain ValueError
    _ToolkitError = Exception


class BadRequest(ValueError, _ToolkitError):  # type: ignore[misc,valid-type]
    """A request the caller must fix. SageMaker's toolkit answers 400 only for its own error
    type (any other exception is a 500), so inside it this is one of those too."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.status_code = 400
        self.message = message
        self.phrase = message

    def __str__(self) -> str:
        return self.message


Encode = Callable[[list[str]], list[list[int]]]
Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class LoadedModel:
    """What ``model_fn`` returns: everything a prediction needs, loaded once."""

    encode: Encode  # texts -> token ids, truncated to max_length, unpadded
    forward: Forward  # (ids, attention mask) as int64 arrays -> logits as float32
    labels: list[str]
    max_length: int
    pad_id: int
    engine: str  # "onnxruntime" | "torch"
    precision: str  # "fp32" | "int8" | ...
    temperature: float = 1.0  # probabilities are softmax(logits / temperature)


def read_serving_config(model_dir: Path) -> dict[str, Any]:
    """labels.json as train.py writes it: ``{"labels", "max_length", "onnx": {...},
    "calibration": {"temperature": T, ...}}``; older artifacts hold a bare label list, or
    none."""
    path = model_dir / "labels.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {"labels": data}


def temperature_of(serving: dict[str, Any]) -> float:
    """The fitted temperature labels.json records; 1 (the raw softmax) for artifacts
    trained before calibration existed. A temperature that is not a finite number > 0 is a
    broken artifact, refused rather than served with meaningless confidences."""
    calibration = serving.get("calibration") or {}
    value = calibration.get("temperature", 1.0) if isinstance(calibration, dict) else None
    try:
        temperature = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        temperature = float("nan")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"labels.json: calibration temperature {value!r} is not a number > 0")
    return temperature


def _torch_labels(serving: dict[str, Any], config: Any) -> list[str]:
    if "labels" in serving:
        return [str(label).lower() for label in serving["labels"]]
    id2label = getattr(config, "id2label", None) or {}
    if len(id2label) == config.num_labels:
        return [str(id2label[i]).lower() for i in range(config.num_labels)]
    return list(DEFAULT_LABELS)


def prepare(
    model: Any,
    tokenizer: Any,
    labels: list[str],
    device: Any,
    max_length: int,
    temperature: float = 1.0,
) -> LoadedModel:
    """A torch model in memory made ready for :func:`predict_texts`: train.py evaluates (and
    cross-fits) through this, so training-time metrics, the gate and serving share one
    predict path, one max length (the one training used, recorded in labels.json) and one
    temperature."""
    import torch

    if len(labels) != model.config.num_labels:
        raise ValueError(f"{len(labels)} labels for a model of {model.config.num_labels}")
    limits = [max_length, int(getattr(model.config, "max_position_embeddings", max_length))]
    if isinstance(getattr(tokenizer, "model_max_length", None), int):
        limits.append(tokenizer.model_max_length)
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits[1] -= 2  # RoBERTa positions start after the padding index
    length = min(limits)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()

    def encode(texts: list[str]) -> list[list[int]]:
        return [
            list(ids)
            for ids in tokenizer(texts, truncation=True, max_length=length, padding=False)[
                "input_ids"
            ]
        ]

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
            ).logits
        return np.asarray(logits.float().cpu().numpy(), dtype=np.float32)

    precision = str(next(model.parameters()).dtype).removeprefix("torch.").replace("float", "fp")
    return LoadedModel(encode, forward, labels, length, pad_id, "torch", precision, temperature)


def onnx_model(folder: Path, serving: dict[str, Any], threads: int | None = None) -> LoadedModel:
    """The ONNX graph named by ``serving["onnx"]`` in ``folder``, tokenized by the
    ``tokenizers`` library: neither torch nor transformers is imported."""
    import onnxruntime
    from tokenizers import Tokenizer

    onnx = serving.get("onnx") or {}
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    max_length = int(serving.get("max_length", MAX_LENGTH))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(folder / str(onnx.get("file", ONNX_FILE))),
        options,
        providers=["CPUExecutionProvider"],
    )

    def encode(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch(texts)]

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(logits, dtype=np.float32)

    labels = [str(label).lower() for label in serving.get("labels", DEFAULT_LABELS)]
    pad_id = int(onnx.get("pad_id", 0))
    return LoadedModel(
        encode,
        forward,
        labels,
        max_length,
        pad_id,
        "onnxruntime",
        str(onnx.get("precision", "fp32")),
        temperature_of(serving),
    )


def _chosen_engine(folder: Path, serving: dict[str, Any], engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    graph = (serving.get("onnx") or {}).get("file")
    if not graph or not (folder / str(graph)).is_file():
        return "torch"
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def load_model(
    model_dir: str | Path, threads: int | None = None, engine: str = "auto"
) -> LoadedModel:
    """Load the artifact in ``model_dir``. Engine "auto": the ONNX graph labels.json names
    when there is one and onnxruntime is installed, else the safetensors weights through
    torch (CUDA when available; ``$SENTILOOP_DEVICE=cpu`` forces the CPU). ``threads`` caps
    the engine's CPU threads (None: all cores)."""
    folder = Path(model_dir)
    serving = read_serving_config(folder)
    if _chosen_engine(folder, serving, engine) == "onnxruntime":
        return onnx_model(folder, serving, threads)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available() and os.environ.get("SENTILOOP_DEVICE", "") != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
    model.to(device)
    labels = _torch_labels(serving, model.config)
    max_length = int(serving.get("max_length", MAX_LENGTH))
    return prepare(model, tokenizer, labels, device, max_length, temperature_of(serving))


def model_fn(model_dir: str, context: Any = None) -> LoadedModel:
    """SageMaker's load step (see :func:`load_model`); the endpoint's environment may set
    ``SENTILOOP_INFERENCE_ENGINE`` as the services' settings do."""
    return load_model(model_dir, engine=os.environ.get("SENTILOOP_INFERENCE_ENGINE") or "auto")


def _content_type_base(content_type: str | None) -> str:
    return (content_type or "application/json").split(";", 1)[0].strip().lower()


def input_fn(
    request_body: str | bytes | bytearray,
    content_type: str | None = "application/json",
    context: Any = None,
) -> list[str]:
    """Decode a request into a non-empty list of non-empty texts; ValueError otherwise."""
    base = _content_type_base(content_type)
    if base not in JSON_TYPES:
        raise BadRequest(f"unsupported content type {content_type!r}: send application/json")
    if isinstance(request_body, bytes | bytearray):
        try:
            request_body = bytes(request_body).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("request body is not UTF-8") from None
    if not isinstance(request_body, str):
        raise BadRequest("request body must be str or bytes")
    try:
        data = json.loads(request_body)
    except ValueError as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(data, dict) or ("text" in data) == ("texts" in data):
        raise BadRequest('expected a JSON object with either "text" or "texts"')
    texts = [data["text"]] if "text" in data else data["texts"]
    if not isinstance(texts, list) or not texts:
        raise BadRequest('"texts" must be a non-empty list of strings')
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            where = '"text"' if "text" in data else f'"texts"[{i}]'
            raise BadRequest(f"{where} must be a non-empty string")
    return texts


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict_logits(
    model: LoadedModel, texts: list[str], batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """Raw logits (texts x labels, float64), in input order: what :func:`predict_texts`
    turns into probabilities, and what train.py fits the temperature on.

    Texts are tokenized once, sorted by length and batched, so each batch pads to nearly its
    own length (padding to the longest of a big batch made it slower per text).
    """
    logits = np.zeros((len(texts), len(model.labels)), dtype=np.float64)
    if not texts:
        return logits
    encoded = model.encode(list(texts))
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = np.full((len(batch), width), model.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i])] = encoded[i]
            mask[row, : len(encoded[i])] = 1
        logits[batch] = model.forward(ids, mask).astype(np.float64)
    return logits


def predict_texts(
    model: LoadedModel, texts: list[str], batch_size: int = BATCH_SIZE
) -> list[dict[str, Any]]:
    """Class probabilities per text, in input order: ``softmax(logits / temperature)``.
    A positive temperature rescales every logit alike, so the label (the argmax) is the
    raw model's; only the confidences and scores are calibrated."""
    if not texts:
        return []
    logits = predict_logits(model, texts, batch_size)
    probabilities = softmax(logits / model.temperature).tolist()
    results: list[dict[str, Any]] = []
    for row_logits, row_probabilities in zip(logits, probabilities, strict=True):
        best = int(np.argmax(row_logits))
        results.append(
            {
                "label": model.labels[best],
                "confidence": row_probabilities[best],
                "scores": dict(zip(model.labels, row_probabilities, strict=True)),
            }
        )
    return results


def predict_fn(data: list[str], model: LoadedModel, context: Any = None) -> list[dict[str, Any]]:
    """SageMaker's predict step: ``data`` is what :func:`input_fn` returned."""
    return predict_texts(model, data)


def output_fn(
    prediction: list[dict[str, Any]], accept: str | None = "application/json", context: Any = None
) -> str:
    """``{"predictions": [...]}`` as JSON (the only format served)."""
    base = _content_type_base(accept)
    if base not in (*JSON_TYPES, "*/*"):
        raise BadRequest(f"unsupported accept type {accept!r}: ask for application/json")
    return json.dumps({"predictions": prediction})
