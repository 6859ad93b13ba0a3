"""The feedback store on its own: validation, durability, ordering, idempotency and its
schema's migrations, on SQLite and on a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from postgres import PostgresServer

from sentiloop.core.db import Database, open_database
from sentiloop.core.errors import FailedPrecondition, InvalidArgument
from sentiloop.feedback.store import MIGRATIONS, Feedback, FeedbackStore, NewFeedback

OpenStore = Callable[..., FeedbackStore]


@pytest.fixture
def open_store(database_url: str) -> Iterator[OpenStore]:
    """Opens stores on the test's database (as a service start, or a second replica,
    would); closes what is still open at the end."""
    opened: list[FeedbackStore] = []

    def open_one(max_text_length: int = 100) -> FeedbackStore:
        store = FeedbackStore(open_database(database_url, Path("unused")), max_text_length)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def test_records_survive_reopening(open_store: OpenStore) -> None:
    store = open_store()
    first, _ = store.submit(NewFeedback(text="good", user_label="Positive"))
    second, _ = store.submit(
        NewFeedback(text="bad", user_label="negative", model_prediction="positive")
    )
    store.close()
    reopened = open_store()
    assert [r.text for r in reopened.list()] == ["good", "bad"]
    assert second.id > first.id
    assert reopened.list() == [first, second]  # timestamps round-trip exactly, in UTC
    stats = reopened.stats()
    assert stats.total == 2
    assert stats.by_label == {"positive": 1, "negative": 1}
    assert stats.disagreements == 1
    assert stats.with_model_prediction == 1
    assert stats.latest_id == second.id
    assert stats.latest_at == second.created_at
    assert reopened.stats(after_count=1).first_new_at == second.created_at


def test_ids_are_never_reused(open_store: OpenStore) -> None:
    store = open_store()
    first, _ = store.submit(NewFeedback(text="a", user_label="neutral"))
    # Even when the newest row disappears, ids keep increasing (SQLite's AUTOINCREMENT,
    # PostgreSQL's identity).
    store.database.run(lambda tx: tx.execute("DELETE FROM feedback"), write=True)
    store.close()
    store = open_store()
    second, _ = store.submit(NewFeedback(text="b", user_label="neutral"))
    assert second.id > first.id


def test_every_problem_is_reported_at_once(open_store: OpenStore) -> None:
    store = open_store(max_text_length=5)
    with pytest.raises(InvalidArgument) as raised:
        store.submit(NewFeedback(text="far too long", user_label="nope", model_prediction="x"))
    assert set(raised.value.violations) == {"text", "user_label", "model_prediction"}
    assert store.stats().total == 0


def test_an_idempotency_key_stores_one_record(open_store: OpenStore) -> None:
    store = open_store()
    first, duplicate = store.submit(
        NewFeedback(text="t", user_label="neutral", idempotency_key="k")
    )
    again, second_duplicate = store.submit(
        NewFeedback(text="other", user_label="positive", idempotency_key="k")
    )
    plain, _ = store.submit(NewFeedback(text="t", user_label="neutral"))
    assert (duplicate, second_duplicate) == (False, True)
    assert again == first and plain.id > first.id
    assert store.count() == 2


def test_concurrent_writers_with_one_key_store_one_record(open_store: OpenStore) -> None:
    """Two store instances on one database (two connections or pools, as two replicas
    would have) race on the same keys: the database's unique constraint decides."""
    replicas = [open_store(), open_store()]
    keys = [f"key-{i}" for i in range(20)]
    writers_per_replica = 4
    start = threading.Barrier(len(replicas) * writers_per_replica)

    def write(replica: FeedbackStore) -> list[tuple[Feedback, bool]]:
        start.wait()
        return [
            replica.submit(NewFeedback(text=key, user_label="positive", idempotency_key=key))
            for key in keys
        ]

    with ThreadPoolExecutor(len(replicas) * writers_per_replica) as pool:
        answers = [
            answer
            for result in pool.map(write, replicas * writers_per_replica)
            for answer in result
        ]
    stored = replicas[0].list(limit=1000)
    assert sorted(r.text for r in stored) == sorted(keys)
    by_key = {r.text: r for r in stored}
    assert all(record == by_key[record.text] for record, _ in answers)
    assert sum(not duplicate for _, duplicate in answers) == len(keys)


def test_audit_requests_and_answered_lookups(open_store: OpenStore) -> None:
    store = open_store()
    store.issue_audit_requests(["a1", "a2"])
    store.issue_audit_requests(["a2", "a3"])
    assert store.audit_requests(["a3", "a2", "a1", "x"]) == ["a1", "a2", "a3"]
    audited, _ = store.submit(NewFeedback(text="t1", user_label="negative", prediction_id="a2"))
    chosen, _ = store.submit(NewFeedback(text="t2", user_label="neutral", prediction_id="c1"))
    assert (audited.audit, chosen.audit) == (True, False)
    assert store.answered(["a2", "c1", "a1", ""], ["t2", "t9"]) == ({"a2", "c1"}, {"t2"})
    assert store.stats().audit == 1


def test_migrations_are_recorded_and_run_once(open_store: OpenStore) -> None:
    store = open_store()
    latest = MIGRATIONS[-1].version
    rows = store.database.run(
        lambda tx: tx.fetch(
            "SELECT version FROM schema_migrations WHERE component = 'feedback' ORDER BY version"
        )
    )
    assert [row["version"] for row in rows] == [m.version for m in MIGRATIONS]
    store.submit(NewFeedback(text="kept", user_label="positive"))
    store.close()
    reopened = open_store()  # nothing to apply: no step runs twice (PostgreSQL's would fail)
    assert [r.text for r in reopened.list()] == ["kept"]
    assert reopened.database.migrate("feedback", MIGRATIONS) == latest


def test_a_schema_newer_than_the_release_is_refused(database_url: str) -> None:
    database = open_database(database_url, Path("unused"))
    try:
        database.migrate("feedback", MIGRATIONS)
        database.run(
            lambda tx: tx.execute(
                "INSERT INTO schema_migrations VALUES ('feedback', 99, 'from the future', '')"
            ),
            write=True,
        )
        with pytest.raises(FailedPrecondition, match="version 99, newer than this release"):
            database.migrate("feedback", MIGRATIONS)
    finally:
        database.close()


def test_a_database_from_before_the_migration_runner_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    with sqlite3.connect(path) as db:  # the schema as the store created it before
        db.executescript(
            """
            CREATE TABLE feedback (
                id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL,
                model_prediction TEXT NOT NULL DEFAULT '', user_label TEXT NOT NULL,
                prediction_id TEXT NOT NULL DEFAULT '', model_version TEXT NOT NULL DEFAULT '',
                idempotency_key TEXT UNIQUE, created_at TEXT NOT NULL,
                audit INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE audit_requests (prediction_id TEXT PRIMARY KEY, issued_at TEXT NOT NULL);
            CREATE INDEX feedback_text ON feedback (text);
            INSERT INTO feedback (text, user_label, idempotency_key, created_at, audit)
                VALUES ('old', 'positive', 'k', '2026-01-01T00:00:00+00:00', 1);
            """
        )
    store = FeedbackStore(path, max_text_length=100)
    [old] = store.list()
    assert (old.text, old.audit) == ("old", True)
    assert store.submit(NewFeedback(text="x", user_label="neutral", idempotency_key="k")) == (
        old,
        True,
    )
    store.close()
    with sqlite3.connect(path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations")]
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    assert versions == [1, 2, 3]
    assert {"feedback_text", "feedback_prediction_id"} <= indexes


def test_database_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db", max_text_length=5)
    database: Database = store.database
    assert database.run(lambda tx: tx.fetch_one("PRAGMA journal_mode")) == {"journal_mode": "wal"}
    assert database.run(lambda tx: tx.fetch_one("PRAGMA synchronous")) == {"synchronous": 2}
    store.close()


def test_postgres_work_survives_lost_connections(postgres: PostgresServer) -> None:
    """The server ends every connection (a restart or failover): the pool replaces them
    and the store's next calls succeed; an idempotent submit is retried."""
    url = postgres.create_database()
    store = FeedbackStore(open_database(url, Path("unused")), 100)
    try:
        store.submit(NewFeedback(text="before", user_label="positive"))
        ended = postgres.execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid != pg_backend_pid()",
        )
        assert ended and all(row[0] for row in ended)
        _, duplicate = store.submit(
            NewFeedback(text="after", user_label="negative", idempotency_key="retried")
        )
        assert not duplicate
        assert [r.text for r in store.list()] == ["before", "after"]
        assert store.stats().total == 2
    finally:
        store.close()


def test_a_reader_going_on_from_its_last_id_misses_no_record(
    postgres: PostgresServer,
) -> None:
    """Two replicas on PostgreSQL: one submit takes id 1 and is slow to commit (a trigger
    sleeps), the other takes id 2 and commits at once. A reader listing after id 0 must
    not get id 2 alone: it would go on from 2 and never see 1. It waits for 1 instead."""
    url = postgres.create_database()
    slow_replica = FeedbackStore(open_database(url, Path("unused"), schema="feedback"), 100)
    fast_replica = FeedbackStore(open_database(url, Path("unused"), schema="feedback"), 100)
    postgres.slow_inserts(url, "feedback.feedback", "NEW.text = 'slow'", 1.5)
    try:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(slow_replica.submit, NewFeedback(text="slow", user_label="neutral"))
            postgres.wait_for_a_slow_insert(url)
            fast, _ = fast_replica.submit(NewFeedback(text="fast", user_label="neutral"))
            listed = fast_replica.list(after_id=0)
            slow_record, _ = slow.result()
        assert slow_record.id < fast.id
        assert [r.text for r in listed] == ["slow", "fast"]
    finally:
        slow_replica.close()
        fast_replica.close()
