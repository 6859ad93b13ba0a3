"""The model registry's store on its own, on SQLite and on a real PostgreSQL server
(tests/postgres.py): versions, the activation history and its undo, serving events, and
two registries on one database (two replicas) activating and rolling back at once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sentiloop.core.db import open_database
from sentiloop.core.errors import FailedPrecondition, InvalidArgument, NotFound
from sentiloop.core.serving import ServingState
from sentiloop.core.vocabulary import EndpointState
from sentiloop.registry.store import Activation, ModelRegistry, NewModel

OpenRegistry = Callable[[], ModelRegistry]


@pytest.fixture
def open_registry(database_url: str, tmp_path: Path) -> Iterator[OpenRegistry]:
    """Opens registries on the test's database (as a start of the service, or of a
    second replica, would); closes what is still open at the end."""
    opened: list[ModelRegistry] = []

    def open_one() -> ModelRegistry:
        registry = ModelRegistry(
            open_database(database_url, tmp_path / "unused.db", schema="registry")
        )
        opened.append(registry)
        return registry

    yield open_one
    for registry in opened:
        registry.close()


def model(source: str = "manual", **fields: Any) -> NewModel:
    return NewModel(path="models/x/model.tar.gz", source=source, **fields)


def test_versions_survive_reopening(open_registry: OpenRegistry) -> None:
    registry = open_registry()
    first = registry.register(
        model(
            source="bootstrap",
            training_job_name="job-1",
            dataset_hash="abc",
            test_metrics={"accuracy": 0.8, "per_class": {"negative": {"f1": 0.7}}},
            validation_metrics={"loss": 0.5},
            gate={"decision": "rejected", "reason": "worse"},
        )
    )
    second = registry.register(model())
    assert (first.version, second.version) == ("v1", "v2")
    assert first.status == "rejected" and first.accuracy == 0.8
    assert second.status == "registered" and not second.is_active
    registry.close()
    reopened = open_registry()
    # Timestamps and metrics round-trip exactly, in UTC.
    assert reopened.versions() == [second, first]
    assert reopened.get("v1") == first
    assert reopened.get("v1").created_at.utcoffset() == UTC.utcoffset(None)
    assert reopened.active() is None


def test_bad_input_and_unknown_versions(open_registry: OpenRegistry) -> None:
    registry = open_registry()
    with pytest.raises(InvalidArgument) as raised:
        registry.register(NewModel(path=" ", source="elsewhere"))
    assert set(raised.value.violations) == {"path", "source"}
    with pytest.raises(NotFound, match="no model version is active"):
        registry.get("active")
    with pytest.raises(NotFound):
        registry.get("v7")
    with pytest.raises(NotFound):
        registry.get("v" + "9" * 18)
    with pytest.raises(InvalidArgument):
        registry.get("../etc")
    with pytest.raises(NotFound):
        registry.activate("v1")
    with pytest.raises(FailedPrecondition, match="no earlier model version"):
        registry.rollback()
    assert registry.activations() == []


def test_activations_and_rollback_undo_one_at_a_time(open_registry: OpenRegistry) -> None:
    registry = open_registry()
    for _ in range(3):
        registry.register(model())
    assert registry.activate("v1") == (registry.get("v1"), "")
    with pytest.raises(FailedPrecondition):
        registry.rollback()  # nothing was active before v1
    active, previous = registry.activate("v2", "better")
    assert active.is_active and active.status == "active" and previous == "v1"
    registry.activate("v3")
    assert registry.get("active").version == "v3"
    assert registry.get("v1").status == "retired"
    back, rolled_back = registry.rollback("broken")
    assert (back.version, rolled_back) == ("v2", "v3")
    back, rolled_back = registry.rollback()
    assert (back.version, rolled_back) == ("v1", "v2")
    with pytest.raises(FailedPrecondition):
        registry.rollback()
    history = registry.activations()
    assert [(a.version, a.previous_version, a.kind) for a in history] == [
        ("v1", "", "rollback"),
        ("v2", "v1", "rollback"),
        ("v3", "v2", "activate"),
        ("v2", "v1", "activate"),
        ("v1", "", "activate"),
    ]
    assert history[1].reason == "broken" and history[3].reason == "better"
    assert all(a.activated_at.tzinfo is not None for a in history)
    assert [a.activated_at for a in history] == sorted(
        (a.activated_at for a in history), reverse=True
    )


def test_a_failed_version_is_reverted_only_while_it_is_the_last_activation(
    open_registry: OpenRegistry,
) -> None:
    registry = open_registry()
    for _ in range(3):
        registry.register(model())
    registry.activate("v1")
    registry.activate("v2")
    assert registry.revert_failed("v2", "v3", "wrong answering version") is None
    reverted = registry.revert_failed("v2", "v1", "v2 failed to load")
    assert reverted is not None and reverted.version == "v1" and reverted.is_active
    assert registry.activations()[0].kind == "reverted"
    # Already undone (the event came to a second replica, or twice): nothing more.
    assert registry.revert_failed("v2", "v1", "v2 failed to load") is None
    assert registry.get("active").version == "v1"


def test_serving_events_are_kept_newest_first(open_registry: OpenRegistry) -> None:
    registry = open_registry()
    registry.register(model())
    assert registry.serving() is None
    serving = ServingState(
        EndpointState.IN_SERVICE, "v1", "v1", engine="onnxruntime", precision="int8"
    )
    assert registry.record_serving(serving, 5)
    assert not registry.record_serving(serving, 5)  # the same event again
    older = ServingState(EndpointState.FAILED, "v1", "v2", "boom", engine="torch")
    assert not registry.record_serving(older, 4)
    # What the endpoint status needs is kept (the engine goes with the version).
    assert registry.serving() == (ServingState(EndpointState.IN_SERVICE, "v1", "v1"), 5)
    version = registry.get("v1")
    assert (version.engine, version.precision) == ("onnxruntime", "int8")
    updating = ServingState(EndpointState.UPDATING, "v1", "v2", "")
    assert registry.record_serving(updating, 6)
    assert registry.serving() == (updating, 6)
    assert registry.get("v1").engine == "onnxruntime"  # an update says nothing about the engine


def test_two_replicas_register_distinct_versions(open_registry: OpenRegistry) -> None:
    replicas = [open_registry(), open_registry()]
    per_replica = 10
    start = threading.Barrier(len(replicas))

    def register(registry: ModelRegistry) -> list[str]:
        start.wait()
        return [registry.register(model()).version for _ in range(per_replica)]

    with ThreadPoolExecutor(len(replicas)) as pool:
        registered = [v for vs in pool.map(register, replicas) for v in vs]
    assert len(set(registered)) == len(registered) == len(replicas) * per_replica
    assert {m.version for m in replicas[0].versions()} == set(registered)


def test_two_replicas_activating_and_rolling_back_at_once_keep_one_history(
    open_registry: OpenRegistry,
) -> None:
    """Each activation's "previous" is the activation before it, and each rollback goes
    back exactly one, even when two processes activate and roll back at the same time
    (the read of what is active and the write of the new activation are one
    serialised transaction)."""
    replicas = [open_registry(), open_registry()]
    per_replica = 12
    for _ in range(len(replicas) * per_replica):
        replicas[0].register(model())
    start = threading.Barrier(len(replicas))

    # Every version is activated once, so the history is a plain undo stack.
    def activate(index: int) -> list[str]:
        start.wait()
        versions = range(index + 1, len(replicas) * per_replica + 1, len(replicas))
        return [replicas[index].activate(f"v{n}")[1] for n in versions]

    with ThreadPoolExecutor(len(replicas)) as pool:
        answered = [p for ps in pool.map(activate, range(len(replicas))) for p in ps]
    chain = oldest_first(replicas[1].activations())
    assert [a.kind for a in chain] == ["activate"] * len(answered)
    assert [a.previous_version for a in chain] == [""] + [a.version for a in chain[:-1]]
    # No two activations saw the same version active before them.
    assert sorted(answered) == sorted(a.previous_version for a in chain)
    stack = [a.version for a in chain]

    rollbacks_per_replica = 4

    def rollback(registry: ModelRegistry) -> list[tuple[str, str]]:
        start.wait()
        answers = []
        for _ in range(rollbacks_per_replica):
            back, rolled_back = registry.rollback("undo")
            answers.append((rolled_back, back.version))
        return answers

    with ThreadPoolExecutor(len(replicas)) as pool:
        undone = [u for us in pool.map(rollback, replicas) for u in us]
    history = oldest_first(replicas[0].activations())
    rollbacks = history[len(chain) :]
    assert len(rollbacks) == len(undone) == len(replicas) * rollbacks_per_replica
    expected = []
    for record in rollbacks:  # in the order they happened: each pops one off the stack
        rolled_back = stack.pop()
        assert record.kind == "rollback"
        assert record.version == stack[-1]
        assert record.previous_version == (stack[-2] if len(stack) > 1 else "")
        expected.append((rolled_back, record.version))
    assert sorted(undone) == sorted(expected)
    assert replicas[1].get("active").version == stack[-1]


def oldest_first(activations: list[Activation]) -> list[Activation]:
    return list(reversed(activations))


def test_a_registry_from_before_the_migration_runner_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with sqlite3.connect(path) as db:  # the schema before gate decisions and shadows
        db.executescript(
            """
            CREATE TABLE versions (
                number INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL,
                source TEXT NOT NULL, training_job_name TEXT NOT NULL DEFAULT '',
                dataset_hash TEXT NOT NULL DEFAULT '', test_metrics TEXT NOT NULL DEFAULT '{}',
                validation_metrics TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL);
            CREATE TABLE activations (
                id INTEGER PRIMARY KEY AUTOINCREMENT, version TEXT NOT NULL,
                previous_version TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '', activated_at TEXT NOT NULL);
            """
        )
        created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        db.execute(
            "INSERT INTO versions (path, source, created_at) VALUES ('models/a', 'bootstrap', ?)",
            (created.isoformat(),),
        )
        db.execute(
            "INSERT INTO activations (version, kind, activated_at) VALUES ('v1', 'activate', ?)",
            (created.isoformat(),),
        )
    db.close()
    registry = ModelRegistry(open_database(None, path))
    old = registry.get("active")
    assert (old.version, old.created_at, old.gate, old.shadow) == ("v1", created, {}, {})
    assert registry.register(model()).version == "v2"
    registry.close()
    registry = ModelRegistry(path)  # a path still opens the SQLite file
    assert [m.version for m in registry.versions()] == ["v2", "v1"]
    registry.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT component, version FROM schema_migrations").fetchall() == [
            ("registry", 1)
        ]
    db.close()
