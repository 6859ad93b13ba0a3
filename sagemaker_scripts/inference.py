"""SageMaker inference handler for models trained by ``train.py``.

The SageMaker HuggingFace/PyTorch serving containers call ``model_fn`` once, then
``input_fn`` -> ``predict_fn`` -> ``output_fn`` per request. Sentiloop's InferenceService uses
the same file in-process (``model_fn`` + :func:`predict_texts`), so local serving and a
SageMaker endpoint answer alike. Like ``train.py`` it must not import ``sentiloop``.

Request: ``{"text": "..."}`` or ``{"texts": ["...", ...]}`` as ``application/json``.
Response: ``{"predictions": [{"label", "confidence", "scores": {label: p}}, ...]}``, one per
text, in request order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LABELS = ["negative", "neutral", "positive"]
MAX_LENGTH = 128
BATCH_SIZE = 32
JSON_TYPES = ("application/json", "application/x-json")


@dataclass
class LoadedModel:
    """What ``model_fn`` returns: everything a prediction needs, loaded once."""

    model: Any
    tokenizer: Any
    labels: list[str]
    device: Any
    max_length: int
    pad_id: int


def _serving_config(model_dir: Path, config: Any) -> tuple[list[str], int]:
    """Label order and max length from labels.json (``{"labels": [...], "max_length": N}``
    as train.py writes it; older artifacts hold a bare list), else the model config and
    :data:`MAX_LENGTH`."""
    path = model_dir / "labels.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        labels = data["labels"] if isinstance(data, dict) else data
        max_length = (
            int(data.get("max_length", MAX_LENGTH)) if isinstance(data, dict) else MAX_LENGTH
        )
        return [str(label).lower() for label in labels], max_length
    id2label = getattr(config, "id2label", None) or {}
    if len(id2label) == config.num_labels:
        return [str(id2label[i]).lower() for i in range(config.num_labels)], MAX_LENGTH
    return list(DEFAULT_LABELS), MAX_LENGTH


def prepare(
    model: Any, tokenizer: Any, labels: list[str], device: Any, max_length: int
) -> LoadedModel:
    """A model in memory made ready for :func:`predict_texts`: train.py evaluates (and
    cross-fits) through this, so training-time metrics, the gate and serving share one
    predict path and one max length (the one training used, recorded in labels.json)."""
    if len(labels) != model.config.num_labels:
        raise ValueError(f"{len(labels)} labels for a model of {model.config.num_labels}")
    limits = [max_length, int(getattr(model.config, "max_position_embeddings", max_length))]
    if isinstance(getattr(tokenizer, "model_max_length", None), int):
        limits.append(tokenizer.model_max_length)
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits[1] -= 2  # RoBERTa positions start after the padding index
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    return LoadedModel(model, tokenizer, labels, device, min(limits), pad_id)


def model_fn(model_dir: str | Path, context: Any = None) -> LoadedModel:
    """Load tokenizer and weights (safetensors only) from ``model_dir``, in eval mode.

    CUDA when available, else CPU; ``$SENTILOOP_DEVICE=cpu`` forces the CPU.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(model_dir)
    cuda = torch.cuda.is_available() and os.environ.get("SENTILOOP_DEVICE", "") != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True)
    model.to(device)
    labels, max_length = _serving_config(folder, model.config)
    return prepare(model, tokenizer, labels, device, max_length)


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
        raise ValueError(f"unsupported content type {content_type!r}: send application/json")
    if isinstance(request_body, bytes | bytearray):
        try:
            request_body = bytes(request_body).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("request body is not UTF-8") from None
    if not isinstance(request_body, str):
        raise ValueError("request body must be str or bytes")
    try:
        data = json.loads(request_body)
    except ValueError as error:
        raise ValueError(f"request body is not valid JSON: {error}") from None
    if not isinstance(data, dict) or ("text" in data) == ("texts" in data):
        raise ValueError('expected a JSON object with either "text" or "texts"')
    texts = [data["text"]] if "text" in data else data["texts"]
    if not isinstance(texts, list) or not texts:
        raise ValueError('"texts" must be a non-empty list of strings')
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            where = '"text"' if "text" in data else f'"texts"[{i}]'
            raise ValueError(f"{where} must be a non-empty string")
    return texts


def predict_texts(
    model: LoadedModel, texts: list[str], batch_size: int = BATCH_SIZE
) -> list[dict[str, Any]]:
    """Class probabilities per text, in input order.

    Texts are tokenized once, sorted by length and batched, so each batch pads to nearly its
    own length (padding to the longest of a big batch made it slower per text).
    """
    import torch

    if not texts:
        return []
    encoded = model.tokenizer(
        list(texts), truncation=True, max_length=model.max_length, padding=False
    )["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[dict[str, Any]] = [{} for _ in texts]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), model.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                mask[row, : len(encoded[i])] = 1
            logits = model.model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device)
            ).logits
            probabilities = torch.softmax(logits.float(), dim=-1).cpu().tolist()
            for i, row_probabilities in zip(batch, probabilities, strict=True):
                scores = dict(zip(model.labels, row_probabilities, strict=True))
                best = max(range(len(model.labels)), key=lambda k: row_probabilities[k])
                results[i] = {
                    "label": model.labels[best],
                    "confidence": row_probabilities[best],
                    "scores": scores,
                }
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
        raise ValueError(f"unsupported accept type {accept!r}: ask for application/json")
    return json.dumps({"predictions": prediction})
