"""The feedback store on its own: validation, durability, ordering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sentiloop.core.errors import InvalidArgument
from sentiloop.feedback.store import FeedbackStore, NewFeedback


def test_records_survive_reopening(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db", max_text_length=100)
    first, _ = store.submit(NewFeedback(text="good", user_label="Positive"))
    second, _ = store.submit(
        NewFeedback(text="bad", user_label="negative", model_prediction="positive")
    )
    store.close()
    reopened = FeedbackStore(tmp_path / "f.db", max_text_length=100)
    assert [r.text for r in reopened.list()] == ["good", "bad"]
    assert second.id > first.id
    stats = reopened.stats()
    assert stats.total == 2
    assert stats.by_label == {"positive": 1, "negative": 1}
    assert stats.disagreements == 1
    assert stats.latest_id == second.id


def test_ids_are_never_reused(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db", max_text_length=100)
    first, _ = store.submit(NewFeedback(text="a", user_label="neutral"))
    store.close()
    # Even when the newest row disappears, AUTOINCREMENT keeps ids increasing.
    with sqlite3.connect(tmp_path / "f.db") as db:
        db.execute("DELETE FROM feedback")
    store = FeedbackStore(tmp_path / "f.db", max_text_length=100)
    second, _ = store.submit(NewFeedback(text="b", user_label="neutral"))
    assert second.id > first.id


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db", max_text_length=5)
    with pytest.raises(InvalidArgument) as raised:
        store.submit(NewFeedback(text="far too long", user_label="nope", model_prediction="x"))
    assert set(raised.value.violations) == {"text", "user_label", "model_prediction"}
    assert store.stats().total == 0


def test_database_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.db", max_text_length=5)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
