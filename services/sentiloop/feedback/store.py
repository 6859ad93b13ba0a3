"""The durable feedback store (domain logic; no grpc here)."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sentiloop.core import sqlite
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.validation import DEFAULT_PAGE_SIZE, check_text, label_problem
from sentiloop.core.vocabulary import normalize_label
from sentiloop.data.feedback_records import to_jsonl

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    text             TEXT NOT NULL,
    model_prediction TEXT NOT NULL DEFAULT '',
    user_label       TEXT NOT NULL,
    prediction_id    TEXT NOT NULL DEFAULT '',
    model_version    TEXT NOT NULL DEFAULT '',
    idempotency_key  TEXT UNIQUE,
    created_at       TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Feedback:
    id: int
    text: str
    model_prediction: str
    user_label: str
    prediction_id: str
    model_version: str
    created_at: datetime


@dataclass(frozen=True)
class FeedbackStats:
    total: int
    by_label: dict[str, int]
    disagreements: int
    with_model_prediction: int
    latest_id: int
    new_count: int = 0
    first_new_at: datetime | None = None
    latest_at: datetime | None = None


@dataclass(frozen=True)
class NewFeedback:
    text: str
    user_label: str
    model_prediction: str = ""
    prediction_id: str = ""
    model_version: str = ""
    idempotency_key: str = ""


class FeedbackStore:
    def __init__(self, path: Path, max_text_length: int) -> None:
        self._max_text_length = max_text_length
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def validate(self, new: NewFeedback) -> NewFeedback:
        problems: dict[str, str] = {}
        text_problem = check_text(new.text, self._max_text_length)
        if text_problem:
            problems["text"] = text_problem
        user_label = normalize_label(new.user_label)
        if not new.user_label.strip():
            problems["user_label"] = "is required"
        elif user_label is None:
            problems["user_label"] = label_problem(new.user_label)
        model_prediction = normalize_label(new.model_prediction) if new.model_prediction else ""
        if model_prediction is None:
            problems["model_prediction"] = label_problem(new.model_prediction)
        if len(new.idempotency_key) > 200:
            problems["idempotency_key"] = "must be at most 200 characters"
        if problems:
            raise InvalidArgument(problems)
        return NewFeedback(
            text=new.text,
            user_label=user_label or "",
            model_prediction=model_prediction or "",
            prediction_id=new.prediction_id.strip(),
            model_version=new.model_version.strip(),
            idempotency_key=new.idempotency_key,
        )

    def submit(self, new: NewFeedback) -> tuple[Feedback, bool]:
        """Stores the record (durably, before returning); True when the
        idempotency key matched an earlier record, which is returned instead."""
        clean = self.validate(new)
        with self._lock:
            if clean.idempotency_key:
                row = self._db.execute(
                    "SELECT * FROM feedback WHERE idempotency_key = ?", (clean.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _from_row(row), True
            created_at = datetime.now(UTC)
            cursor = self._db.execute(
                "INSERT INTO feedback (text, model_prediction, user_label, prediction_id,"
                " model_version, idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    clean.text,
                    clean.model_prediction,
                    clean.user_label,
                    clean.prediction_id,
                    clean.model_version,
                    clean.idempotency_key or None,
                    created_at.isoformat(),
                ),
            )
            row = self._db.execute(
                "SELECT * FROM feedback WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
        return _from_row(row), False

    def list(self, after_id: int = 0, limit: int = DEFAULT_PAGE_SIZE) -> list[Feedback]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM feedback WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [_from_row(row) for row in rows]

    def export(self) -> tuple[bytes, int, int]:
        """Every record as JSON lines, oldest first: (content, count, newest id)."""
        records = self.list(after_id=0, limit=2**62)
        content = to_jsonl(records)
        return content, len(records), records[-1].id if records else 0

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def stats(self, after_count: int = 0) -> FeedbackStats:
        """Counts, and what came after the first ``after_count`` records (by position:
        records are never deleted, so a count is a point in the store's history)."""
        if after_count < 0:
            raise InvalidArgument({"after_count": "must not be negative"})
        with self._lock:
            first_new = self._db.execute(
                "SELECT created_at FROM feedback ORDER BY id LIMIT 1 OFFSET ?", (after_count,)
            ).fetchone()
            latest = self._db.execute(
                "SELECT created_at FROM feedback ORDER BY id DESC LIMIT 1"
            ).fetchone()
            by_label = {
                row["user_label"]: row["n"]
                for row in self._db.execute(
                    "SELECT user_label, COUNT(*) AS n FROM feedback GROUP BY user_label"
                )
            }
            row = self._db.execute(
                "SELECT COUNT(*) AS total,"
                " COALESCE(SUM(model_prediction != '' AND model_prediction != user_label), 0)"
                "   AS disagreements,"
                " COALESCE(SUM(model_prediction != ''), 0) AS with_prediction,"
                " COALESCE(MAX(id), 0) AS latest_id FROM feedback"
            ).fetchone()
        return FeedbackStats(
            total=row["total"],
            by_label=by_label,
            disagreements=row["disagreements"],
            with_model_prediction=row["with_prediction"],
            latest_id=row["latest_id"],
            new_count=max(0, row["total"] - after_count),
            first_new_at=datetime.fromisoformat(first_new[0]) if first_new else None,
            latest_at=datetime.fromisoformat(latest[0]) if latest else None,
        )


def _from_row(row: sqlite3.Row) -> Feedback:
    return Feedback(
        id=row["id"],
        text=row["text"],
        model_prediction=row["model_prediction"],
        user_label=row["user_label"],
        prediction_id=row["prediction_id"],
        model_version=row["model_version"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )
