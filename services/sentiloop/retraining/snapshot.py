"""The training data of a retraining run: the original training set plus feedback,
deduplicated (the latest label per text wins), with a share of the feedback held out
for the promotion gate. Snapshots are immutable and content-hashed."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass

from sentiloop.core.objectstore import ObjectStore
from sentiloop.model_init.datasets import StoredDataset


@dataclass(frozen=True)
class Snapshot:
    content_hash: str
    channels: dict[str, str]  # train / validation / test key prefixes
    holdout_key: str  # held-out feedback, CSV text,label
    feedback_train: int
    feedback_holdout: int


def held_out(text: str, fraction: float) -> bool:
    """Deterministic by text, so a text stays on its side across runs."""
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _csv(rows: list[dict[str, str]], columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def build_snapshot(
    store: ObjectStore, base: StoredDataset, feedback_jsonl: bytes, holdout_fraction: float
) -> Snapshot:
    latest: dict[str, str] = {}
    for line in feedback_jsonl.decode().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record["text"]] = record["user_label"]
    train_feedback = {t: label for t, label in latest.items() if not held_out(t, holdout_fraction)}
    holdout = {t: label for t, label in latest.items() if held_out(t, holdout_fraction)}

    original = csv.DictReader(
        io.StringIO(store.get_bytes(base.channels["train"] + "train.csv").decode())
    )
    rows = [
        {"text": row["text"], "label": row["label"], "source": "original"}
        for row in original
        # feedback on a training text replaces its original label; held-out texts leave
        # training altogether, so the gate never scores a text the model trained on
        if row["text"] not in latest
    ]
    rows += [
        {"text": t, "label": label, "source": "feedback"} for t, label in train_feedback.items()
    ]
    train = _csv(rows, ["text", "label", "source"])
    holdout_csv = _csv(
        [{"text": t, "label": label} for t, label in holdout.items()], ["text", "label"]
    )
    content_hash = hashlib.sha256(
        base.content_hash.encode() + b"\0" + train + b"\0" + holdout_csv
    ).hexdigest()
    prefix = f"datasets/retraining/{content_hash}"
    if not store.exists(f"{prefix}/holdout/holdout.csv"):
        store.put_bytes(f"{prefix}/train/train.csv", train)
        store.put_bytes(f"{prefix}/holdout/holdout.csv", holdout_csv)  # written last
    return Snapshot(
        content_hash=content_hash,
        channels={
            "train": f"{prefix}/train/",
            "validation": base.channels["validation"],
            "test": base.channels["test"],
        },
        holdout_key=f"{prefix}/holdout/holdout.csv",
        feedback_train=len(train_feedback),
        feedback_holdout=len(holdout),
    )
