"""InferenceService's prediction log on its own, on SQLite and on a real PostgreSQL server
(tests/postgres.py): replicas logging at once, what reads it back (floats, times, the
order), the cost of a write, and a log made before the migration runner."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from sentiloop.core.config import MAX_RECENT_PREDICTIONS
from sentiloop.core.db import Database, open_database
from sentiloop.inference.engine import Prediction, PredictionLog
from sentiloop.inference.shadow import ShadowStore

REPLICAS = 2
THREADS_PER_REPLICA = 3
BATCHES_PER_THREAD = 15
BATCH = 8


@pytest.fixture
def databases(database_url: str, tmp_path: Path) -> Iterator[list[Database]]:
    """One database per replica: each its own connection (SQLite) or pool (PostgreSQL)
    on the same data, opened as create_app opens it."""
    opened = [
        open_database(database_url, tmp_path / "unused.db", schema="inference", durable=False)
        for _ in range(REPLICAS)
    ]
    yield opened
    for database in opened:
        database.close()


def prediction(name: str, confidence: float) -> Prediction:
    scores = {"negative": 0.1, "neutral": 1 / 3, "positive": confidence}
    return Prediction(name, f"text of {name}", "positive", confidence, scores, "v1")


def test_two_replicas_logging_at_once_lose_nothing(databases: list[Database]) -> None:
    replicas = [PredictionLog(database) for database in databases]
    writers = REPLICAS * THREADS_PER_REPLICA
    start = threading.Barrier(writers)

    def write(writer: int) -> list[list[str]]:
        log = replicas[writer % REPLICAS]
        start.wait()
        batches = []
        for b in range(BATCHES_PER_THREAD):
            batch = [prediction(f"w{writer}-b{b}-{i}", 0.1 + 0.2 * (i % 5)) for i in range(BATCH)]
            log.record(batch)
            batches.append([p.id for p in batch])
        return batches

    with ThreadPoolExecutor(writers) as pool:
        batches = [batch for result in pool.map(write, range(writers)) for batch in result]
    logged = [name for batch in batches for name in batch]
    assert len(logged) == writers * BATCHES_PER_THREAD * BATCH < MAX_RECENT_PREDICTIONS

    for reader in replicas:  # each replica reads every replica's predictions
        recent = reader.recent(MAX_RECENT_PREDICTIONS)
        ids = [p.id for p in recent]
        assert len(ids) == len(set(ids)) == len(logged)
        assert set(ids) == set(logged)
        # Newest first; a batch shares its time, its last logged first.
        times = [p.created_at for p in recent]
        assert all(t is not None and t.tzinfo is not None for t in times)
        assert times == sorted(times, reverse=True)  # type: ignore[type-var]
        position = {name: i for i, name in enumerate(ids)}
        for batch in batches:
            assert [position[name] for name in batch] == sorted(
                (position[name] for name in batch), reverse=True
            )
    # Read back as logged: the floats exactly (doubles), the time aware, in UTC.
    got = replicas[1].get("w0-b3-4")
    assert replace(got, created_at=None) == prediction("w0-b3-4", 0.1 + 0.2 * 4)
    assert got.created_at is not None and got.created_at.utcoffset() == timedelta(0)


def test_a_batch_logged_again_is_logged_once(databases: list[Database]) -> None:
    """A retry after a lost commit answer (PostgreSQL retries idempotent work) finds the
    rows there: the random ids keep them once."""
    log = PredictionLog(databases[0])
    batch = [prediction(f"p{i}", 0.5) for i in range(3)]
    log.record(batch)
    log.record(batch)
    log.record([])
    assert [p.id for p in log.recent(10)] == ["p2", "p1", "p0"]


def test_a_logged_answer_is_not_flushed_to_disk_on_its_own(databases: list[Database]) -> None:
    """The answer path's cost: as before the port, a commit waits for no flush to disk
    (SQLite WAL with synchronous=NORMAL; PostgreSQL synchronous_commit=off)."""
    log = PredictionLog(databases[0])
    if log.database.engine == "sqlite":
        setting = log.database.run(lambda tx: tx.fetch_one("PRAGMA synchronous"))
        assert setting is not None and setting["synchronous"] == 1  # NORMAL
    else:
        setting = log.database.run(lambda tx: tx.fetch_one("SHOW synchronous_commit"))
        assert setting == {"synchronous_commit": "off"}


OLD_PREDICTIONS_FILE = """
CREATE TABLE predictions (
    id            TEXT PRIMARY KEY,
    text          TEXT NOT NULL,
    model_version TEXT NOT NULL,
    label         TEXT NOT NULL,
    confidence    REAL NOT NULL,
    scores        TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE TABLE shadow_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    version     TEXT NOT NULL,
    artifact    TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    ends_at     TEXT NOT NULL,
    ended_at    TEXT,
    end_reason  TEXT NOT NULL DEFAULT '',
    skipped     INTEGER NOT NULL DEFAULT 0
);
INSERT INTO predictions VALUES ('old', 'from before', 'v1', 'positive', 0.75,
    '{"positive": 0.75}', '2026-01-01T00:00:00.250000+00:00');
INSERT INTO shadow_runs (version, artifact, started_at, ends_at)
    VALUES ('v2', 'a', '2026-01-01T00:00:00+00:00', '2026-01-02T00:00:00+00:00');
"""


def test_a_log_made_before_the_migrations_is_adopted(tmp_path: Path) -> None:
    """A predictions.db of the release before (no index, no schema_migrations; the shadow
    tables of its first release): opened by a replica of this one, its rows stay."""
    path = tmp_path / "predictions.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_PREDICTIONS_FILE)
    database = open_database(None, path, durable=False)
    try:
        log, shadows = PredictionLog(database), ShadowStore(database)
        old = log.get("old")
        assert (old.confidence, old.scores, old.created_at) == (
            0.75,
            {"positive": 0.75},
            log.recent(1)[0].created_at,
        )
        run = shadows.latest()
        assert run is not None and (run.id, run.version, run.ended_at) == (1, "v2", None)
        log.record([prediction("new", 0.5)])
        assert [p.id for p in log.recent(5)] == ["new", "old"]
        applied = database.run(
            lambda tx: tx.fetch("SELECT component, version FROM schema_migrations ORDER BY 1")
        )
        assert [tuple(row.values()) for row in applied] == [("predictions", 1), ("shadow", 1)]
        index = database.run(
            lambda tx: tx.fetch_one(
                "SELECT name FROM sqlite_master WHERE name = 'predictions_created_at'"
            )
        )
        assert index is not None
    finally:
        database.close()
