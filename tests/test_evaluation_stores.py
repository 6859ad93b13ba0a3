"""Evaluation's stores on their own, on both engines: the feedback mirror and kept scores
(scores.db) and the reports (evaluations.db), sharing one schema on PostgreSQL; long
texts, the latest label winning whichever replica applies a page, and reports kept in
order."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sentiloop.core.db import open_database
from sentiloop.evaluation.evaluator import EvaluationStore, FeedbackRecord, Known
from sentiloop.evaluation.reports import ReportStore


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[EvaluationStore, EvaluationStore, ReportStore]]:
    def scores() -> EvaluationStore:
        return EvaluationStore(open_database(database_url, Path("unused"), schema="evaluation"))

    opened = (
        scores(),
        scores(),
        ReportStore(open_database(database_url, Path("unused"), schema="evaluation")),
    )
    yield opened
    for store in opened:
        store.close()


def record(id: int, text: str, label: str = "positive", **kwargs: str) -> FeedbackRecord:
    return FeedbackRecord(
        id, text, label, kwargs.get("model_version", ""), kwargs.get("model_prediction", "")
    )


def test_the_latest_label_wins_and_long_texts_are_kept(
    stores: tuple[EvaluationStore, EvaluationStore, ReportStore],
) -> None:
    store, _, _ = stores
    # 5,000 characters that do not compress: over what a B-tree entry may hold.
    noise = random.Random(1)
    long = "".join(chr(noise.randrange(0x4E00, 0x9FFF)) for _ in range(5000))
    store.apply(
        [
            record(1, "a", "negative"),
            record(2, long, "neutral", model_version="v1", model_prediction="neutral"),
            record(3, "a", "positive"),
        ]
    )
    store.apply([record(1, "a", "negative")])  # a page applied again, late: changes nothing
    assert store.last_id() == 3
    data, known = store.feedback_for("art", "v1")
    assert list(zip(data.texts, data.labels, strict=True)) == [(long, 1), ("a", 2)]
    assert known == {long: Known(1)}  # the served answer of v1
    store.keep("art", {long: Known(0, [0.5, 0.3, 0.2]), "a": Known(2)})
    store.keep("art", {"a": Known(1, [0.1, 0.8, 0.1])})  # predicted again: replaced
    assert store.scores("art", [long, "a", "missing"]) == {
        long: Known(0, [0.5, 0.3, 0.2]),
        "a": Known(1, [0.1, 0.8, 0.1]),
    }
    assert store.scores("other", [long]) == {}
    _, known = store.feedback_for("art", "v2")
    assert known == {long: Known(0, [0.5, 0.3, 0.2]), "a": Known(1, [0.1, 0.8, 0.1])}


def test_replicas_applying_pages_at_once_agree(
    stores: tuple[EvaluationStore, EvaluationStore, ReportStore],
) -> None:
    """Two replicas bring the one mirror up to date from the same pages, in any order:
    the mirror ends as one that applied them in order."""
    first, second, _ = stores
    records = [record(i, f"text {i % 30}", ("negative", "neutral", "positive")[i % 3]) for i in
               range(1, 301)]  # fmt: skip
    pages = [records[i : i + 25] for i in range(0, len(records), 25)]
    start = threading.Barrier(4)

    def sync(store: EvaluationStore, order: list[list[FeedbackRecord]]) -> None:
        start.wait()
        for page in order:
            store.apply(page)

    with ThreadPoolExecutor(4) as pool:
        done = [
            pool.submit(sync, store, order)
            for store in (first, second)
            for order in (pages, pages[::-1])
        ]
        for future in done:
            future.result()
    latest = {r.text: r for r in records}
    data, _ = second.feedback_for("art", "v1")
    expected = sorted(latest.values(), key=lambda r: r.id)
    assert data.texts == [r.text for r in expected]
    labels = ("negative", "neutral", "positive")
    assert data.labels == [labels.index(r.user_label) for r in expected]
    assert first.last_id() == 300


def test_reports_round_trip_newest_first(
    stores: tuple[EvaluationStore, EvaluationStore, ReportStore],
) -> None:
    _, _, reports = stores
    one = reports.add("v1", {"f1": 0.5}, {"f1": 0.6}, 10)
    two = reports.add("v2", {"f1": 0.7}, {"f1": 0.8}, 12)
    three = reports.add("v1", {}, {"f1": 0.61}, 12)
    assert reports.recent() == [three, two, one]  # timestamps round-trip exactly, in UTC
    assert reports.recent("v1", limit=1) == [three]
    assert one.created_at.tzinfo is not None


def test_a_reports_file_from_before_the_migration_runner_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "evaluations.db"
    with sqlite3.connect(path) as db:  # the schema as the store created it before
        db.executescript(
            """
            CREATE TABLE evaluations (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                model_version TEXT NOT NULL, created_at TEXT NOT NULL, report TEXT NOT NULL);
            CREATE INDEX evaluations_by_version ON evaluations (model_version, seq);
            INSERT INTO evaluations (id, model_version, created_at, report) VALUES
                ('old', 'v1', '2026-01-01T00:00:00+00:00',
                 '{"feedback": {}, "test": {"f1": 0.5}, "feedback_count": 3}');
            """
        )
    reports = ReportStore(path)
    try:
        [old] = reports.recent()
        assert (old.id, old.created_at, old.feedback_count) == (
            "old",
            datetime(2026, 1, 1, tzinfo=UTC),
            3,
        )
        new = reports.add("v2", {}, {}, 4)
        assert reports.recent() == [new, old]
    finally:
        reports.close()
