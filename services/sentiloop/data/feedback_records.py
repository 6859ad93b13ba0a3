"""The feedback record format of exports and snapshots, JSON Lines: written by the feedback
service, read by retraining (and anyone reading an export). This module owns it.

A record that answers an audit request (a prediction drawn uniformly at random from recent
traffic by GET /feedback/requests) carries ``"audit": true``; other records carry no
``audit`` key, so a record stored before audit samples existed serialises to the same bytes
as it always did (export objects are rewritten byte for byte after a crash, and snapshots
are named by their content): read it as ``record.get("audit", False)``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol


class Record(Protocol):
    """What a stored feedback record has (the feedback service's ``Feedback``)."""

    @property
    def id(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def user_label(self) -> str: ...
    @property
    def model_prediction(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def prediction_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def audit(self) -> bool: ...


def record_line(record: Record) -> str:
    """One record as one line of JSON (no newline), keys sorted."""
    fields: dict[str, object] = {
        "id": record.id,
        "text": record.text,
        "user_label": record.user_label,
        "model_prediction": record.model_prediction,
        "model_version": record.model_version,
        "prediction_id": record.prediction_id,
        "created_at": record.created_at.isoformat(),
    }
    if record.audit:
        fields["audit"] = True
    return json.dumps(fields, sort_keys=True)


def to_jsonl(records: Iterable[Record]) -> bytes:
    return "".join(record_line(r) + "\n" for r in records).encode()


def latest_labels(content: bytes) -> dict[str, str]:
    """Text -> label of a JSON Lines export, the latest record of a text winning."""
    latest: dict[str, str] = {}
    for line in content.decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record["text"]] = record["user_label"]
    return latest
