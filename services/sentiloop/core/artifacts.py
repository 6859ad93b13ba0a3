"""Model artifacts (model.tar.gz in the object store) unpacked into a local cache."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import uuid
from pathlib import Path

from sentiloop.core.objectstore import ObjectStore


def unpack_artifact(store: ObjectStore, artifact: str, cache_dir: Path) -> Path:
    """The artifact's model folder, fetched and unpacked once (atomically, by rename)."""
    folder = cache_dir / hashlib.sha256(artifact.encode()).hexdigest()[:24]
    if (folder / "config.json").is_file():
        return folder
    staging = cache_dir / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        archive = staging / "model.tar.gz"
        store.download(store.key_of(artifact), archive)
        with tarfile.open(archive) as tar:
            # filter="data" refuses absolute paths, links out of the folder, devices.
            tar.extractall(staging / "model", filter="data")
        # Another process (an InferenceService replica) may have unpacked it meanwhile:
        # keep its complete folder (it may be loading from it); replace a partial one.
        if not (folder / "config.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                (staging / "model").rename(folder)
            except OSError:
                if not (folder / "config.json").is_file():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
