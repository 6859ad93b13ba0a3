"""The training data of a retraining run: the original training set plus all feedback,
deduplicated (the latest label per text wins; feedback on an original text replaces its
label). None is held out: the training job cross-fits, so the gate scores every feedback
label out of fold. Snapshots are immutable and content-hashed."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass

from sentiloop.core.objectstore import ObjectStore
from sentiloop.data import vader
from sentiloop.data.datasets import StoredDataset, now, save_record
from sentiloop.data.feedback_records import latest_labels


@dataclass(frozen=True)
class Snapshot:
    content_hash: str
    channels: dict[str, str]  # train / validation / test key prefixes
    feedback: int  # feedback rows in the train channel


def _csv(rows: list[dict[str, str]], columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def build_snapshot(store: ObjectStore, base: StoredDataset, feedback_jsonl: bytes) -> Snapshot:
    latest = latest_labels(feedback_jsonl)
    original = csv.DictReader(
        io.StringIO(store.get_bytes(base.channels["train"] + "train.csv").decode())
    )
    rows = [
        {"text": row["text"], "label": row["label"], "source": "original"}
        for row in original
        if row["text"] not in latest
    ]
    rows += [{"text": t, "label": label, "source": "feedback"} for t, label in latest.items()]
    train = _csv(rows, ["text", "label", "source"])
    content_hash = hashlib.sha256(base.content_hash.encode() + b"\0" + train).hexdigest()
    prefix = f"datasets/retraining/{content_hash}"
    if not store.exists(f"{prefix}/train/train.csv"):
        store.put_bytes(f"{prefix}/train/train.csv", train)
    counts = {label: 0 for label in vader.LABELS}
    for row in rows:
        counts[vader.canonical_label(row["label"])] += 1
    # The record names the base, so a model trained on this snapshot belongs to the base
    # dataset (lineage), and the next retraining merges its feedback into that base again.
    save_record(
        store,
        StoredDataset(
            content_hash=content_hash,
            channels={**base.channels, "train": f"{prefix}/train/"},
            counts={**base.counts, "train": counts},
            name=f"{base.name} + {len(latest)} feedback",
            kind="snapshot",
            source=f"retraining snapshot of {base.content_hash}",
            base=base.content_hash,
            created_at=now(),
        ),
    )
    return Snapshot(
        content_hash=content_hash,
        channels={
            "train": f"{prefix}/train/",
            "validation": base.channels["validation"],
            "test": base.channels["test"],
        },
        feedback=len(latest),
    )
