"""Datasets in the object store, in the layout a SageMaker job reads: one prefix per
channel under datasets/<domain>/<content hash>/."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sentiloop.core.objectstore import ObjectStore
from sentiloop.data import vader

CHANNELS = ("train", "validation", "test")


@dataclass(frozen=True)
class StoredDataset:
    content_hash: str
    channels: dict[str, str]  # channel -> key prefix
    counts: dict[str, dict[str, int]]


def ensure_dataset(
    store: ObjectStore, domain: str = "amazon", neutral_band: float = vader.DEFAULT_NEUTRAL_BAND
) -> StoredDataset:
    """Builds the dataset (deterministic) and uploads it unless that content is stored."""
    with tempfile.TemporaryDirectory() as tmp:
        info = vader.build_dataset(Path(tmp), domain=domain, neutral_band=neutral_band)
        prefix = f"datasets/{domain}/{info.content_hash}"
        if not store.exists(f"{prefix}/dataset.json"):
            for channel in CHANNELS:
                store.put_file(
                    f"{prefix}/{channel}/{channel}.csv", Path(tmp) / channel / f"{channel}.csv"
                )
            # Written last: its presence marks the dataset complete.
            store.put_bytes(f"{prefix}/dataset.json", (Path(tmp) / "dataset.json").read_bytes())
    stored = json.loads(store.get_bytes(f"{prefix}/dataset.json"))
    return StoredDataset(
        content_hash=info.content_hash,
        channels={channel: f"{prefix}/{channel}/" for channel in CHANNELS},
        counts=stored.get("counts", info.counts),
    )
