"""Conversions between plain Python values and the shared protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from sentiloop.core.errors import InvalidArgument
from sentiloop.v1 import common_pb2


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def datetime_of(message: Any, field: str) -> datetime | None:
    """A message's Timestamp field as an aware datetime; None when it is unset."""
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return value


def list_value(rows: list[list[int]]) -> struct_pb2.ListValue:
    value = struct_pb2.ListValue()
    for row in rows:
        value.append(row)  # type: ignore[arg-type]
    return value


def _optional_number(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def metrics_to_proto(metrics: dict[str, Any] | None) -> common_pb2.ClassificationMetrics:
    """From the metrics.json shape train.py writes for one split (``ece`` and ``brier``
    stay unset where the split has none: labels only, or an older model)."""
    if not metrics:
        return common_pb2.ClassificationMetrics()
    labels = list(metrics.get("confusion_matrix_labels", []))
    per_class = metrics.get("per_class", {})
    return common_pb2.ClassificationMetrics(
        accuracy=float(metrics.get("accuracy", 0.0)),
        macro_f1=float(metrics.get("macro_f1", 0.0)),
        per_class=[
            common_pb2.ClassMetrics(
                label=label,
                precision=float(per_class[label].get("precision", 0.0)),
                recall=float(per_class[label].get("recall", 0.0)),
                f1=float(per_class[label].get("f1", 0.0)),
                support=int(per_class[label].get("support", 0)),
            )
            for label in labels
            if label in per_class
        ],
        confusion_matrix=list_value(
            [[int(x) for x in row] for row in metrics.get("confusion_matrix", [])]
        ),
        confusion_matrix_labels=labels,
        total_samples=int(metrics.get("total_samples", 0)),
        correct_predictions=int(metrics.get("correct_predictions", 0)),
        ece=_optional_number(metrics, "ece"),
        brier=_optional_number(metrics, "brier"),
    )


def _confusion_matrix(matrix: struct_pb2.ListValue) -> list[list[int]]:
    """A caller-sent confusion matrix: rows of whole, non-negative counts."""
    rows = []
    for row in matrix:
        counts = [
            int(x)
            for x in (row if isinstance(row, struct_pb2.ListValue) else [])
            if isinstance(x, float) and x.is_integer() and 0 <= x < 2**53
        ]
        if not isinstance(row, struct_pb2.ListValue) or len(counts) != len(row):
            raise InvalidArgument(
                {"confusion_matrix": "must be a list of rows of whole, non-negative counts"}
            )
        rows.append(counts)
    return rows


def metrics_from_proto(metrics: common_pb2.ClassificationMetrics) -> dict[str, Any]:
    if not metrics.ByteSize():
        return {}
    calibration = {
        name: getattr(metrics, name) for name in ("ece", "brier") if metrics.HasField(name)
    }
    return {
        "accuracy": metrics.accuracy,
        "macro_f1": metrics.macro_f1,
        "per_class": {
            c.label: {
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
                "support": c.support,
            }
            for c in metrics.per_class
        },
        "confusion_matrix": _confusion_matrix(metrics.confusion_matrix),
        "confusion_matrix_labels": list(metrics.confusion_matrix_labels),
        "total_samples": metrics.total_samples,
        "correct_predictions": metrics.correct_predictions,
        **calibration,
    }
