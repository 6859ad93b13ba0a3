"""The event log on its own, on both engines: several publishers (two store instances on
one database, as two replicas) and a reader replaying "after the last id seen" at the
same time; the reader must see every event once, in id order, none passed over."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from postgres import PostgresServer

from sentiloop.core.db import open_database
from sentiloop.notification.events import EventLog

PUBLISHERS_PER_REPLICA = 3
EVENTS_PER_PUBLISHER = 40


@pytest.fixture
def replicas(database_url: str) -> Iterator[list[EventLog]]:
    logs = [
        EventLog(open_database(database_url, Path("unused"), schema="notification"))
        for _ in range(2)
    ]
    yield logs
    for log in logs:
        log.close()


def test_events_round_trip(replicas: list[EventLog]) -> None:
    log, other = replicas
    first = log.publish("model.promoted", "v2", "better", {"delta": 0.5, "tags": ["a"]})
    second = other.publish("training.completed", "job")
    assert second.id > first.id
    assert other.after(0) == [first, second]  # timestamps round-trip exactly, in UTC
    assert first.created_at.tzinfo is not None
    assert log.list() == [second, first]
    assert log.list("model.") == [first]
    assert log.after(0, ["training.", "x_y."]) == [second]
    assert log.after(0, ["model_promoted"]) == []  # '_' is no wildcard
    assert log.latest_id() == second.id


def test_a_replaying_reader_sees_every_event_once_in_order(replicas: list[EventLog]) -> None:
    total = 2 * PUBLISHERS_PER_REPLICA * EVENTS_PER_PUBLISHER
    start = threading.Barrier(2 * PUBLISHERS_PER_REPLICA + 1)
    published: list[int] = []

    def publish(log: EventLog, publisher: int) -> None:
        start.wait()
        for i in range(EVENTS_PER_PUBLISHER):
            published.append(log.publish("test.event", f"{publisher}", str(i)).id)

    def read() -> list[int]:
        seen: list[int] = []
        last_id = 0
        start.wait()
        deadline = time.monotonic() + 60
        while len(seen) < total and time.monotonic() < deadline:
            batch = replicas[1].after(last_id, limit=7)
            seen += [event.id for event in batch]
            if batch:
                last_id = batch[-1].id
        return seen

    with ThreadPoolExecutor(2 * PUBLISHERS_PER_REPLICA + 1) as pool:
        reader = pool.submit(read)
        writers = [
            pool.submit(publish, log, n) for n in range(PUBLISHERS_PER_REPLICA) for log in replicas
        ]
        for writer in writers:
            writer.result()
        seen = reader.result()
    assert seen == sorted(published)  # each once, in order, and nothing passed over
    assert len(set(seen)) == total


def test_a_publish_that_commits_late_is_not_passed_over(postgres: PostgresServer) -> None:
    """PostgreSQL, two replicas: one publish is slow to commit (a trigger sleeps), another
    comes meanwhile. Had the second drawn the next id and committed first, a reader would
    go on from it and never see the first; it waits its turn instead."""
    url = postgres.create_database()
    slow_log, fast_log = (
        EventLog(open_database(url, Path("unused"), schema="notification")) for _ in range(2)
    )
    postgres.slow_inserts(url, "notification.events", "NEW.type = 'test.slow'", 1.0)
    try:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(slow_log.publish, "test.slow")
            postgres.wait_for_a_slow_insert(url)
            fast = pool.submit(fast_log.publish, "test.fast")
            first_seen: list[str] = []
            deadline = time.monotonic() + 10
            while not first_seen and time.monotonic() < deadline:
                first_seen = [event.type for event in fast_log.after(0)]
            slow_event, fast_event = slow.result(), fast.result()
        assert first_seen[0] == "test.slow"
        assert slow_event.id < fast_event.id
        assert [e.type for e in fast_log.after(0)] == ["test.slow", "test.fast"]
    finally:
        slow_log.close()
        fast_log.close()


def test_a_database_from_before_the_migration_runner_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as db:  # the schema as the log created it before
        db.executescript(
            """
            CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
                subject TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
                attributes TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL);
            CREATE INDEX events_by_type ON events (type, id);
            INSERT INTO events (type, created_at)
                VALUES ('model.promoted', '2026-01-01T00:00:00+00:00');
            """
        )
    log = EventLog(path)
    try:
        [old] = log.after(0)
        assert old.created_at == datetime(2026, 1, 1, tzinfo=UTC)
        assert log.publish("model.rejected").id > old.id
    finally:
        log.close()
