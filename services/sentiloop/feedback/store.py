"""The durable feedback store (domain logic; no grpc here)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Sequence
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
    created_at       TEXT NOT NULL,
    audit            INTEGER NOT NULL DEFAULT 0
);
-- The audit samples GET /feedback/requests handed out: feedback citing one is marked
-- `audit` (a uniform sample of traffic, not a correction a user chose to make).
CREATE TABLE IF NOT EXISTS audit_requests (
    prediction_id TEXT PRIMARY KEY,
    issued_at     TEXT NOT NULL
);
"""
# After the migration below: an index on a column a database made before it lacks would fail.
INDEXES = """
CREATE INDEX IF NOT EXISTS feedback_prediction_id ON feedback (prediction_id);
CREATE INDEX IF NOT EXISTS feedback_text ON feedback (text);
"""
# SQLite's limit on a statement's variables is 32766 today but was 999 before 3.32.
_IN_CHUNK = 500


@dataclass(frozen=True)
class Feedback:
    id: int
    text: str
    model_prediction: str
    user_label: str
    prediction_id: str
    model_version: str
    created_at: datetime
    audit: bool = False


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
    audit: int = 0


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
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(feedback)")}
        if "audit" not in columns:  # a database from before audit samples
            self._db.execute("ALTER TABLE feedback ADD COLUMN audit INTEGER NOT NULL DEFAULT 0")
        self._db.executescript(INDEXES)

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
                " model_version, idempotency_key, created_at, audit)"
                " VALUES (?, ?, ?, ?, ?, ?, ?,"
                " EXISTS (SELECT 1 FROM audit_requests WHERE prediction_id = ? AND ? != ''))",
                (
                    clean.text,
                    clean.model_prediction,
                    clean.user_label,
                    clean.prediction_id,
                    clean.model_version,
                    clean.idempotency_key or None,
                    created_at.isoformat(),
                    clean.prediction_id,
                    clean.prediction_id,
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
                " COALESCE(SUM(audit), 0) AS audit,"
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
            audit=row["audit"],
        )

    def answered(
        self, prediction_ids: Collection[str], texts: Collection[str]
    ) -> tuple[set[str], set[str]]:
        """Which of ``prediction_ids`` have feedback citing them, and which of ``texts``
        have feedback (cited or not: the original API's feedback carries only a text)."""
        ids: set[str] = set()
        labelled_texts: set[str] = set()
        with self._lock:
            for chunk in _chunks([i for i in prediction_ids if i]):
                ids.update(
                    row[0]
                    for row in self._db.execute(
                        "SELECT DISTINCT prediction_id FROM feedback WHERE prediction_id IN"
                        f" ({_marks(chunk)})",
                        chunk,
                    )
                )
            for chunk in _chunks(texts):
                labelled_texts.update(
                    row[0]
                    for row in self._db.execute(
                        f"SELECT DISTINCT text FROM feedback WHERE text IN ({_marks(chunk)})",
                        chunk,
                    )
                )
        return ids, labelled_texts

    def issue_audit_requests(self, prediction_ids: Collection[str]) -> None:
        """Records the audit samples handed out (durably; one already issued keeps its
        first time), so that feedback citing them is marked ``audit``."""
        if not prediction_ids:
            return
        issued_at = datetime.now(UTC).isoformat()
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO audit_requests (prediction_id, issued_at) VALUES (?, ?)",
                [(prediction_id, issued_at) for prediction_id in prediction_ids],
            )

    def audit_requests(self, prediction_ids: Collection[str]) -> Sequence[str]:
        """Which of ``prediction_ids`` were handed out as audit samples, first issued first."""
        issued: set[tuple[str, str]] = set()
        with self._lock:
            for chunk in _chunks(prediction_ids):
                issued.update(
                    (row[0], row[1])
                    for row in self._db.execute(
                        "SELECT prediction_id, issued_at FROM audit_requests"
                        f" WHERE prediction_id IN ({_marks(chunk)})",
                        chunk,
                    )
                )
        return [prediction_id for prediction_id, _ in sorted(issued, key=lambda i: (i[1], i[0]))]


def _chunks(values: Collection[str]) -> list[list[str]]:
    unique = sorted(set(values))
    return [unique[i : i + _IN_CHUNK] for i in range(0, len(unique), _IN_CHUNK)]


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" * len(values))


def _from_row(row: sqlite3.Row) -> Feedback:
    return Feedback(
        id=row["id"],
        text=row["text"],
        model_prediction=row["model_prediction"],
        user_label=row["user_label"],
        prediction_id=row["prediction_id"],
        model_version=row["model_version"],
        created_at=datetime.fromisoformat(row["created_at"]),
        audit=bool(row["audit"]),
    )
