"""Where datasets, model artifacts and reports live: a small interface with a
local-directory implementation (the default) and an S3 one (issue #5).

Objects are addressed by keys like ``models/JOB/output/model.tar.gz``; ``uri(key)``
is what gets recorded (a path locally, ``s3://bucket/key`` on S3)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from sentiloop.core.config import Settings
from sentiloop.core.errors import InvalidArgument, NotFound


class ObjectStore(Protocol):
    def put_file(self, key: str, source: Path) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> str: ...
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool: ...
    def get_bytes(self, key: str) -> bytes: ...
    def download(self, key: str, destination: Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def uri(self, key: str) -> str: ...
    def key_of(self, uri: str) -> str: ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument({"key": f"{key!r} is not a valid object key"})
    return key


class LocalObjectStore:
    """Objects as files under one root; writes are atomic (temp file + rename + fsync)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # A link inside the store must not lead a read or a write out of it.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidArgument({"key": f"{key!r} leads out of the object store"})
        return path

    def _write_atomically(self, key: str, write: object) -> str:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)  # type: ignore[operator]
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def put_file(self, key: str, source: Path) -> str:
        def copy(out: object) -> None:
            with source.open("rb") as src:
                shutil.copyfileobj(src, out)  # type: ignore[arg-type]

        return self._write_atomically(key, copy)

    def put_bytes(self, key: str, data: bytes) -> str:
        return self._write_atomically(key, lambda out: out.write(data))

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Writes the object unless one exists; True when this call created it. Atomic:
        the complete, fsynced temporary file is hard-linked to the key, and link(2)
        fails when the name exists (readers never see a partial object)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key!r} in the object store")
        return path.read_bytes()

    def download(self, key: str, destination: Path) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no object {key!r} in the object store")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        return destination

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Removes the object; one that is not there is no error."""
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def key_of(self, uri: str) -> str:
        path = Path(uri).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidArgument({"uri": f"{uri!r} is not in this object store"})
        return str(path.relative_to(self.root))


def open_object_store(settings: Settings) -> ObjectStore:
    """The object store the configuration names (``SENTILOOP_OBJECT_STORE``)."""
    if settings.object_store == "local":
        return LocalObjectStore(settings.data_dir / "objects")
    # Imported here: boto3 is only loaded when S3 is configured.
    from sentiloop.core.s3store import open_s3_object_store

    return open_s3_object_store(settings)
