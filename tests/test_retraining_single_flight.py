"""The retraining runs' store on both engines: one run at a time whoever asks (threads,
store instances, OS processes: replicas), decided by the database's partial unique
index; a run's owner renews it, and only an abandoned run is taken from it."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sentiloop.core.db import open_database
from sentiloop.core.errors import AlreadyExists
from sentiloop.retraining.runs import LEASE_SECONDS, MIGRATIONS, Run, RunStore

OpenStore = Callable[[], RunStore]


@pytest.fixture
def open_store(database_url: str) -> Iterator[OpenStore]:
    opened: list[RunStore] = []

    def open_one() -> RunStore:
        store = RunStore(open_database(database_url, Path("unused"), schema="retraining"))
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def begin(store: RunStore, trigger: str = "manual") -> Run:
    return store.begin(trigger, 12, "default", 7, False)


def test_a_run_round_trips_and_finishing_frees_the_slot(open_store: OpenStore) -> None:
    store = open_store()
    run = store.begin("policy", 12, "naive", 7, True)
    store.set_job(run.id, "job-1")
    assert store.running() == store.get(run.id)
    with pytest.raises(AlreadyExists, match="training job job-1"):
        begin(store)
    store.finish(run.id, "completed", {"message": "done"})
    store.close()
    reopened = open_store()
    ended = reopened.get(run.id)
    assert (ended.status, ended.job_name, ended.result, ended.force) == (
        "completed",
        "job-1",
        {"message": "done"},
        True,
    )
    assert ended.started_at == run.started_at and ended.started_at.tzinfo is not None
    assert ended.ended_at is not None and ended.ended_at >= ended.started_at
    assert reopened.running() is None
    second = begin(reopened)
    assert second.id > run.id
    assert reopened.last() == second
    assert reopened.last_automatic() == ended


def test_many_threads_of_two_replicas_begin_exactly_one_run(open_store: OpenStore) -> None:
    replicas = [open_store(), open_store()]
    callers = 16
    start = threading.Barrier(callers)

    def try_begin(store: RunStore) -> Run | None:
        start.wait()
        try:
            return begin(store)
        except AlreadyExists:
            return None

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(try_begin, replicas * (callers // 2)))
    started = [run for run in results if run is not None]
    assert len(started) == 1
    assert replicas[1].running() == started[0]
    rows = replicas[0].database.run(lambda tx: tx.fetch_one("SELECT COUNT(*) AS n FROM runs"))
    assert rows == {"n": 1}  # the losers left no row behind


def _begin_in_a_process(url: str, start: Any, attempts: int) -> list[int]:
    """One retraining process (spawned): its own store and connections, several callers."""
    store = RunStore(open_database(url, Path("unused"), schema="retraining"))
    try:
        start.wait(30)
        won: list[int] = []

        def try_begin(_: int) -> None:
            with contextlib.suppress(AlreadyExists):
                won.append(begin(store).id)

        with ThreadPoolExecutor(attempts) as pool:
            list(pool.map(try_begin, range(attempts)))
        return won
    finally:
        store.close()


def test_two_os_processes_begin_exactly_one_run(database_url: str) -> None:
    """Two replicas as two processes on one database, racing after a common barrier."""
    context = multiprocessing.get_context("spawn")
    RunStore(open_database(database_url, Path("unused"), schema="retraining")).close()
    with context.Manager() as manager, context.Pool(2) as pool:
        start = manager.Barrier(2)
        pending = [
            pool.apply_async(_begin_in_a_process, (database_url, start, 4)) for _ in range(2)
        ]
        won = [run_id for result in pending for run_id in result.get(timeout=60)]
    assert len(won) == 1
    store = RunStore(open_database(database_url, Path("unused"), schema="retraining"))
    try:
        running = store.running()
        assert running is not None and running.id == won[0]
    finally:
        store.close()


def test_a_replica_takes_only_an_abandoned_run(open_store: OpenStore) -> None:
    owner, other = open_store(), open_store()
    run = begin(owner)
    assert other.interrupt(stale_after=LEASE_SECONDS) == []  # renewed just now
    assert owner.interrupt(stale_after=None) == []  # never its own
    assert owner.heartbeat(run.id)
    stale = (datetime.now(UTC) - timedelta(seconds=LEASE_SECONDS + 5)).isoformat()
    owner.database.run(
        lambda tx: tx.execute("UPDATE runs SET heartbeat_at = ?", (stale,)), write=True
    )
    [taken] = other.interrupt(stale_after=LEASE_SECONDS)
    assert taken.id == run.id and taken.status == "failed"
    assert "stopped" in other.get(run.id).result["error"]
    assert not owner.heartbeat(run.id)  # the owner learns it lost the run
    assert begin(other).id > run.id


def test_a_restart_on_sqlite_interrupts_whatever_ran(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    before = RunStore(path)
    run = begin(before)
    before.close()
    after = RunStore(path)
    try:
        assert [r.id for r in after.interrupt(stale_after=None)] == [run.id]
        assert after.running() is None
    finally:
        after.close()


def test_a_database_from_before_the_migration_runner_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as db:  # the schema as the store created it before
        db.executescript(
            """
            CREATE TABLE runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL,
                trigger TEXT NOT NULL, job_name TEXT NOT NULL DEFAULT '',
                feedback_total INTEGER NOT NULL, recipe TEXT NOT NULL, seed INTEGER NOT NULL,
                force INTEGER NOT NULL DEFAULT 0, started_at TEXT NOT NULL, ended_at TEXT,
                result TEXT NOT NULL DEFAULT '{}');
            CREATE UNIQUE INDEX one_running_run ON runs (status) WHERE status = 'running';
            INSERT INTO runs (status, trigger, feedback_total, recipe, seed, started_at)
                VALUES ('running', 'manual', 10, 'default', 1, '2026-01-01T00:00:00+00:00');
            """
        )
    store = RunStore(path)
    try:
        old = store.running()
        assert old is not None and old.owner == ""
        with pytest.raises(AlreadyExists):
            begin(store)
        # Begun before owners were recorded: no renewal, so abandoned for any replica.
        assert [r.id for r in store.interrupt(stale_after=LEASE_SECONDS)] == [old.id]
        assert begin(store).id > old.id
        assert store.database.migrate("runs", MIGRATIONS) == MIGRATIONS[-1].version
    finally:
        store.close()
