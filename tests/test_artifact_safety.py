"""Only real artifacts get registered (and unpacked): a model.tar.gz in the object store's
model area that unpacks safely and holds safetensors weights, the tokenizer and
labels.json. Every trick is refused naming the problem, and nothing outside the store is
opened: the paths below include a named pipe, which would block whoever opened it."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from sentiloop.core.artifacts import (
    MAX_MEMBERS,
    MAX_UNPACKED_BYTES,
    archive_problems,
    check_artifact,
    unpack_artifact,
)
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.objectstore import LocalObjectStore

MODEL_FILES = {
    "config.json": b'{"model_type": "bert"}',
    "labels.json": b'{"labels": ["negative", "neutral", "positive"], "max_length": 32}',
    "tokenizer.json": b"{}",
    "model.safetensors": b"weights",
}


def tarball(path: Path, add: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for info, data in add:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, data: bytes = b"", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def model(*extra: tuple[tarfile.TarInfo, bytes | None], drop: str = "") -> list:
    return [member(n, d) for n, d in MODEL_FILES.items() if n != drop] + list(extra)


def test_a_complete_artifact_passes(tmp_path: Path) -> None:
    assert archive_problems(tarball(tmp_path / "a.tar.gz", model())) == []


@pytest.mark.parametrize(
    ("members", "words"),
    [
        (model(member("../../outside.txt", b"x")), "'../../outside.txt' would unpack outside"),
        (model(member("/etc/cron.d/job", b"x")), "'/etc/cron.d/job' would unpack outside"),
        (model(member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd")), "'link' is a link"),
        (model(member("hard", type=tarfile.LNKTYPE, linkname="config.json")), "'hard' is a link"),
        (model(member("pipe", type=tarfile.FIFOTYPE)), "'pipe' is not a file or folder"),
        (model(member("pytorch_model.bin", b"pickle")), "pickled files (pytorch_model.bin)"),
        (model(drop="model.safetensors"), "no safetensors weights"),
        (model(drop="tokenizer.json"), "lacks tokenizer.json"),
        (model(drop="labels.json"), "lacks labels.json"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "fifo", "pickle", "no-weights",
         "no-tokenizer", "no-labels"],
)  # fmt: skip
def test_unsafe_or_incomplete_archives_are_named(tmp_path: Path, members: list, words: str) -> None:
    problems = archive_problems(tarball(tmp_path / "a.tar.gz", members))
    assert any(words in problem for problem in problems), problems


def test_a_tarball_bomb_is_refused_from_its_headers(tmp_path: Path) -> None:
    """The sizes in the headers are summed before anything is unpacked: a member that
    declares more than the limit (its data never written here) stops the check at once,
    and so do more members than the limit."""
    huge = tarfile.TarInfo("model.safetensors")
    huge.size = MAX_UNPACKED_BYTES + 1
    bomb = tmp_path / "bomb.tar.gz"
    with bomb.open("wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.addfile(huge)  # header only: the archive claims what it would unpack to
    assert archive_problems(bomb) == [f"would unpack to more than {MAX_UNPACKED_BYTES} bytes"]
    many = model(*(member(f"f{i}") for i in range(MAX_MEMBERS)))
    assert archive_problems(tarball(tmp_path / "many.tar.gz", many)) == [
        f"holds more than {MAX_MEMBERS} members"
    ]


def test_not_a_tarball(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    assert "not a readable tar.gz archive" in archive_problems(path)[0]


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def refused(store: LocalObjectStore, path: str) -> str:
    """check_artifact's refusal of ``path``, within seconds (opening the pipe would hang)."""
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            check_artifact(store, path)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(10)
    assert outcome, f"checking {path!r} blocked: something opened the pipe"
    error = outcome[0]
    assert isinstance(error, InvalidArgument), error
    return error.violations["path"]


def test_paths_outside_the_model_area_are_refused_unopened(
    tmp_path: Path, store: LocalObjectStore
) -> None:
    pipe = tmp_path / "outside.tar.gz"
    os.mkfifo(pipe)
    link = store.root / "models" / "job" / "output" / "model.tar.gz"
    link.parent.mkdir(parents=True)
    link.symlink_to(pipe)
    assert "is not in the object store" in refused(store, "/etc/passwd")
    assert "is not in the object store" in refused(store, "models/\x00.tar.gz")
    assert "is not in the object store" in refused(store, "../../../../etc/passwd")
    assert "is not in the object store" in refused(store, str(pipe))
    assert "is not in the object store" in refused(store, str(link))  # a link out of it
    tarball(store.root / "datasets" / "x" / "model.tar.gz", model())
    assert "models/ area" in refused(store, str(store.root / "datasets/x/model.tar.gz"))
    assert "no artifact at" in refused(store, str(store.root / "models/none/model.tar.gz"))


def test_a_store_artifact_is_checked_and_unpacked(tmp_path: Path, store: LocalObjectStore) -> None:
    good = tarball(store.root / "models" / "ok" / "output" / "model.tar.gz", model())
    check_artifact(store, str(good))
    folder = unpack_artifact(store, str(good), tmp_path / "cache")
    assert (folder / "labels.json").read_bytes() == MODEL_FILES["labels.json"]
    bad = store.root / "models" / "bad" / "output" / "model.tar.gz"
    tarball(bad, model(member("../escape", b"x")))
    assert "would unpack outside" in refused(store, str(bad))
    with pytest.raises(InvalidArgument, match="would unpack outside"):
        unpack_artifact(store, str(bad), tmp_path / "cache")
    assert not (tmp_path / "escape").exists()
