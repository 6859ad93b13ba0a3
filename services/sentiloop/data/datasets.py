"""Datasets in the object store, in the layout a SageMaker job reads: one prefix per channel,
``<prefix>/<channel>/<channel>.csv``, and a record per dataset under ``datasets/index/``.

Three kinds share the layout and the record: the built-in product-review sentences
(``builtin``), files a user imported (``imported``, see :mod:`sentiloop.data.importer`) and
retraining snapshots (``snapshot``: a base dataset's train split plus feedback, its
validation and test split unchanged). A dataset's id is the SHA-256 of its three CSV files
(in channel order), so the same content is one dataset however often it is imported, and a
model version's ``dataset_hash`` names the dataset it was trained on.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core.errors import InvalidArgument, NotFound
from sentiloop.core.objectstore import ObjectStore
from sentiloop.core.validation import quoted
from sentiloop.data import vader

CHANNELS = ("train", "validation", "test")
INDEX = "datasets/index/"
BUILTIN_NAME = "product-reviews"
MIN_ID_PREFIX = 8


@dataclass(frozen=True)
class StoredDataset:
    content_hash: str
    channels: dict[str, str]  # channel -> key prefix
    counts: dict[str, dict[str, int]]  # channel -> label -> examples
    name: str = BUILTIN_NAME
    kind: str = "builtin"
    source: str = ""
    # A snapshot's base: the dataset whose validation and test splits it reuses and whose
    # train split it extends with feedback. Empty for the other kinds.
    base: str = ""
    created_at: str = ""  # ISO 8601, UTC
    report: dict[str, Any] = field(default_factory=dict)  # what the import found

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, content: bytes) -> StoredDataset:
        data = json.loads(content)
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def record_key(content_hash: str) -> str:
    return f"{INDEX}{content_hash}.json"


def save_record(store: ObjectStore, dataset: StoredDataset) -> StoredDataset:
    """Writes the record unless one exists (datasets are immutable); returns the stored one.
    Written after the channel files: a record means the dataset is complete."""
    key = record_key(dataset.content_hash)
    if not store.put_bytes_if_absent(key, dataset.to_json()):
        return StoredDataset.from_json(store.get_bytes(key))
    return dataset


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def ensure_dataset(
    store: ObjectStore, domain: str = "amazon", neutral_band: float = vader.DEFAULT_NEUTRAL_BAND
) -> StoredDataset:
    """Builds the built-in dataset (deterministic) and uploads it unless that content is
    stored."""
    with tempfile.TemporaryDirectory() as tmp:
        info = vader.build_dataset(Path(tmp), domain=domain, neutral_band=neutral_band)
        prefix = f"datasets/{domain}/{info.content_hash}"
        if store.exists(record_key(info.content_hash)):
            return StoredDataset.from_json(store.get_bytes(record_key(info.content_hash)))
        if not store.exists(f"{prefix}/dataset.json"):
            for channel in CHANNELS:
                store.put_file(
                    f"{prefix}/{channel}/{channel}.csv", Path(tmp) / channel / f"{channel}.csv"
                )
            store.put_bytes(f"{prefix}/dataset.json", (Path(tmp) / "dataset.json").read_bytes())
    stored = json.loads(store.get_bytes(f"{prefix}/dataset.json"))
    return save_record(
        store,
        StoredDataset(
            content_hash=info.content_hash,
            channels={channel: f"{prefix}/{channel}/" for channel in CHANNELS},
            counts=stored.get("counts", info.counts),
            name=BUILTIN_NAME if domain == "amazon" else domain,
            kind="builtin",
            source=f"VADER ground truth: {info.source}",
            created_at=now(),
        ),
    )


def list_datasets(store: ObjectStore, include_snapshots: bool = False) -> list[StoredDataset]:
    """Every complete dataset, newest first."""
    found = [
        StoredDataset.from_json(store.get_bytes(key))
        for key in store.list(INDEX)
        if key.endswith(".json")
    ]
    found = [d for d in found if include_snapshots or d.kind != "snapshot"]
    return sorted(found, key=lambda d: (d.created_at, d.content_hash), reverse=True)


def is_dataset_id(value: str) -> bool:
    """A dataset id or a prefix long enough to name one (any case): else, e.g., a file URI."""
    wanted = value.strip().lower()
    return len(wanted) >= MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in wanted)


def check_dataset_id(dataset_id: str, field_name: str = "dataset_id") -> str:
    wanted = dataset_id.strip().lower()
    if not is_dataset_id(wanted):
        raise InvalidArgument(
            {field_name: f"{quoted(dataset_id)} is not a dataset id (its content hash, or at"
             f" least its first {MIN_ID_PREFIX} hex digits)"}
        )  # fmt: skip
    return wanted


def get_dataset(
    store: ObjectStore, dataset_id: str, field_name: str = "dataset_id"
) -> StoredDataset:
    """A dataset by its id or a unique prefix of it (at least 8 hex digits)."""
    wanted = check_dataset_id(dataset_id, field_name)
    if len(wanted) == 64 and store.exists(record_key(wanted)):
        return StoredDataset.from_json(store.get_bytes(record_key(wanted)))
    matches = [
        key
        for key in store.list(INDEX)
        if key.endswith(".json") and key[len(INDEX) :].startswith(wanted)
    ]
    if not matches:
        raise NotFound(f"no dataset {wanted!r}; GET /datasets lists them")
    if len(matches) > 1:
        raise InvalidArgument({field_name: f"{wanted!r} names {len(matches)} datasets; give more"
                               " of the id"})  # fmt: skip
    return StoredDataset.from_json(store.get_bytes(matches[0]))


def lineage_dataset(store: ObjectStore, dataset_hash: str) -> StoredDataset:
    """The dataset a model trained on ``dataset_hash`` belongs to: that dataset itself, or a
    snapshot's base. Models recorded before datasets had records belong to the built-in one."""
    if dataset_hash and store.exists(record_key(dataset_hash)):
        dataset = StoredDataset.from_json(store.get_bytes(record_key(dataset_hash)))
        if dataset.base:
            return lineage_dataset(store, dataset.base)
        return dataset
    return ensure_dataset(store)


def prune_snapshots(store: ObjectStore, keep: set[str]) -> list[str]:
    """Deletes the retraining snapshots whose hash is not in ``keep`` (the dataset hashes
    model versions reference, and any a run still uses); returns the deleted hashes.
    A snapshot owns only its train split (validation and test are its base's); the record
    goes first, so a half-deleted snapshot is never taken for a complete one."""
    deleted = []
    for dataset in list_datasets(store, include_snapshots=True):
        if dataset.kind != "snapshot" or dataset.content_hash in keep:
            continue
        store.delete(record_key(dataset.content_hash))
        train = dataset.channels["train"]
        for key in store.list(train):
            store.delete(key)
        deleted.append(dataset.content_hash)
    return deleted
