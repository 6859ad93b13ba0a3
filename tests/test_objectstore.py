"""The local object store: atomic writes, conditional writes, safe keys."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sentiloop.core.errors import InvalidArgument, NotFound
from sentiloop.core.objectstore import LocalObjectStore


def test_round_trip_and_listing(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    uri = store.put_bytes("a/b.txt", b"hello")
    assert store.get_bytes("a/b.txt") == b"hello"
    assert store.key_of(uri) == "a/b.txt"
    assert store.list("a") == ["a/b.txt"]
    with pytest.raises(NotFound):
        store.get_bytes("a/missing")


def test_put_if_absent_has_exactly_one_winner(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    assert store.put_bytes_if_absent("k", b"first") is True
    assert store.put_bytes_if_absent("k", b"second") is False
    assert store.get_bytes("k") == b"first"
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda i: store.put_bytes_if_absent("race", b"%d" % i), range(8)))
    assert wins.count(True) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b"])
def test_keys_cannot_leave_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidArgument):
        LocalObjectStore(tmp_path).put_bytes(key, b"x")


def test_delete_removes_and_tolerates_missing(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put_bytes("gone/a.txt", b"a")
    store.delete("gone/a.txt")
    assert not store.exists("gone/a.txt") and store.list("gone/") == []
    store.delete("gone/a.txt")
