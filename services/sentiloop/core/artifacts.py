"""Model artifacts (model.tar.gz in the object store): checked before they are registered
and before they are unpacked into a local cache."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path, PurePosixPath

from sentiloop.core.errors import InvalidArgument, NotFound
from sentiloop.core.objectstore import ObjectStore

# Where training jobs write artifacts (models/<job>/output/model.tar.gz, locally and in S3).
MODEL_AREA = "models/"
# Limits far above a real artifact (MiniLM: 90 MB, 20 files) and far below what would fill
# a disk: the sizes are read from the tar headers, before any member is unpacked.
MAX_UNPACKED_BYTES = 8 * 1024**3
MAX_MEMBERS = 1000
REQUIRED_FILES = ("config.json", "labels.json", "tokenizer.json")
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")


def archive_problems(archive: Path) -> list[str]:
    """What makes ``archive`` unsafe to unpack or not a model Sentiloop can serve: links,
    absolute or escaping names, special files, too many members or bytes, pickled weights,
    missing safetensors weights, tokenizer or labels.json. Reads headers only."""
    problems: list[str] = []
    names: set[str] = set()
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    return [f"holds more than {MAX_MEMBERS} members"]
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    problems.append(f"member {member.name!r} would unpack outside its folder")
                elif member.issym() or member.islnk():
                    problems.append(f"member {member.name!r} is a link")
                elif not (member.isfile() or member.isdir()):
                    problems.append(f"member {member.name!r} is not a file or folder")
                total += max(member.size, 0)
                if total > MAX_UNPACKED_BYTES:
                    return [f"would unpack to more than {MAX_UNPACKED_BYTES} bytes"]
                if member.isfile():
                    names.add(str(PurePosixPath(*[p for p in name.parts if p != "."])))
    except (tarfile.TarError, EOFError, OSError) as error:
        return [f"is not a readable tar.gz archive ({error})"]
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        problems.append(f"holds pickled files ({', '.join(pickles)}); only safetensors load")
    if not any(n.endswith(".safetensors") and "/" not in n for n in names):
        problems.append("holds no safetensors weights")
    missing = [n for n in REQUIRED_FILES if n not in names]
    if missing:
        problems.append(f"lacks {', '.join(missing)}")
    return problems


def check_artifact(store: ObjectStore, artifact: str) -> None:
    """InvalidArgument naming the problem unless ``artifact`` is a model.tar.gz in the
    store's model area that :func:`archive_problems` finds nothing wrong with. Nothing
    outside the store is opened: the location is checked before anything is read."""
    try:
        key = store.key_of(artifact)
    except (InvalidArgument, ValueError, OSError):  # ValueError: a NUL byte, for one
        raise InvalidArgument({"path": f"{artifact!r} is not in the object store"}) from None
    if not key.startswith(MODEL_AREA) or not key.endswith(".tar.gz"):
        raise InvalidArgument(
            {"path": f"{artifact!r} is not a model.tar.gz in the store's {MODEL_AREA} area"}
        )
    with tempfile.TemporaryDirectory(prefix="sentiloop-artifact-") as scratch:
        archive = Path(scratch) / "model.tar.gz"
        try:
            store.download(key, archive)
        except NotFound:
            raise InvalidArgument({"path": f"no artifact at {artifact!r}"}) from None
        problems = archive_problems(archive)
    if problems:
        raise InvalidArgument({"path": f"the artifact {'; '.join(problems)}"})


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
        problems = archive_problems(archive)
        if problems:
            raise InvalidArgument({"artifact": f"{artifact!r} {'; '.join(problems)}"})
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
