"""The durable feedback store (domain logic; no grpc here), on SQLite or PostgreSQL
(core/db.py)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core.db import (
    Database,
    Migration,
    SQLiteDatabase,
    Transaction,
    sqlite_columns_if_missing,
    stored_time,
)
from sentiloop.core.errors import InvalidArgument
from sentiloop.core.validation import DEFAULT_PAGE_SIZE, check_text, label_problem
from sentiloop.core.vocabulary import normalize_label
from sentiloop.data.feedback_records import to_jsonl

# A SQLite database made before the migration runner has no schema_migrations row yet,
# at one of two points of its history (with or without the audit column and table): its
# steps are written to be no-ops on what exists, so such a database runs them all once
# and is then at the latest version like any other.
MIGRATIONS = (
    Migration(
        1,
        "feedback records with idempotency keys",
        sqlite=(
            """CREATE TABLE IF NOT EXISTS feedback (
                id               INTEGER PRIMARY KEY AUTOINCREMENT,
                text             TEXT NOT NULL,
                model_prediction TEXT NOT NULL DEFAULT '',
                user_label       TEXT NOT NULL,
                prediction_id    TEXT NOT NULL DEFAULT '',
                model_version    TEXT NOT NULL DEFAULT '',
                idempotency_key  TEXT UNIQUE,
                created_at       TEXT NOT NULL
            )""",
        ),
        postgresql=(
            # An identity never hands out an id twice, as SQLite's AUTOINCREMENT; the
            # unique key is what makes a retry idempotent across replicas.
            """CREATE TABLE feedback (
                id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                text             TEXT NOT NULL,
                model_prediction TEXT NOT NULL DEFAULT '',
                user_label       TEXT NOT NULL,
                prediction_id    TEXT NOT NULL DEFAULT '',
                model_version    TEXT NOT NULL DEFAULT '',
                idempotency_key  TEXT UNIQUE,
                created_at       TIMESTAMPTZ NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "audit samples: the audit flag and the audit_requests GET /feedback/requests issued",
        sqlite=(
            sqlite_columns_if_missing("feedback", {"audit": "INTEGER NOT NULL DEFAULT 0"}),
            """CREATE TABLE IF NOT EXISTS audit_requests (
                prediction_id TEXT PRIMARY KEY,
                issued_at     TEXT NOT NULL
            )""",
        ),
        postgresql=(
            "ALTER TABLE feedback ADD COLUMN audit BOOLEAN NOT NULL DEFAULT FALSE",
            """CREATE TABLE audit_requests (
                prediction_id TEXT PRIMARY KEY,
                issued_at     TIMESTAMPTZ NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "indexes for the labelling queue's lookups",
        sqlite=(
            "CREATE INDEX IF NOT EXISTS feedback_prediction_id ON feedback (prediction_id)",
            "CREATE INDEX IF NOT EXISTS feedback_text ON feedback (text)",
        ),
        postgresql=(
            "CREATE INDEX feedback_prediction_id ON feedback (prediction_id)",
            # Hash, not B-tree: a B-tree entry must fit a third of a page, and texts may
            # be longer; the lookups are equality only.
            "CREATE INDEX feedback_text ON feedback USING hash (text)",
        ),
    ),
)
# pg_advisory lock key: submits hold it shared, list() takes it exclusively ("feedback").
SETTLED_IDS_LOCK = 0x66656564626163
EVERY_ID = 2**63 - 1  # above any id either engine hands out
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
    """``database``: an opened database (core/db.py), or the path of a SQLite file."""

    def __init__(self, database: Database | Path, max_text_length: int) -> None:
        self._max_text_length = max_text_length
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        try:
            self.database.migrate("feedback", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        self.database.close()

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
        key = clean.idempotency_key

        def store(tx: Transaction) -> tuple[Row, bool]:
            if tx.engine == "postgresql":
                # Shared: submits of every replica run side by side; list() takes it
                # exclusively to find the ids that are settled (see SETTLED_IDS_LOCK).
                tx.fetch("SELECT pg_advisory_xact_lock_shared(?)", (SETTLED_IDS_LOCK,))
            # No look for the key first: a retry is rare, and the unique key answers it.
            inserted = tx.fetch_one(
                "INSERT INTO feedback (text, model_prediction, user_label, prediction_id,"
                " model_version, idempotency_key, created_at, audit)"
                " VALUES (?, ?, ?, ?, ?, ?, ?,"
                " EXISTS (SELECT 1 FROM audit_requests"
                "   WHERE prediction_id = ? AND prediction_id != ''))"
                " ON CONFLICT (idempotency_key) DO NOTHING RETURNING *",
                (
                    clean.text,
                    clean.model_prediction,
                    clean.user_label,
                    clean.prediction_id,
                    clean.model_version,
                    key or None,
                    datetime.now(UTC).isoformat(),
                    clean.prediction_id,
                ),
            )
            if inserted is not None:
                return inserted, False
            # The key is stored already: by an earlier attempt (a retry), or by another
            # replica meanwhile (the unique constraint, not a process's memory, decides).
            row = tx.fetch_one("SELECT * FROM feedback WHERE idempotency_key = ?", (key,))
            assert row is not None
            return row, True

        # With a key a retry after a lost commit answer finds the first attempt's record.
        row, duplicate = self.database.run(store, write=True, idempotent=bool(key))
        return _from_row(row), duplicate

    def list(self, after_id: int = 0, limit: int = DEFAULT_PAGE_SIZE) -> list[Feedback]:
        """Records above ``after_id`` in id order. A reader that goes on from the last id
        it saw (the exporter, evaluation's and shadow's cursors, paging) misses nothing:
        every id listed is settled, so no record can later appear below it."""
        settled = self._settled_id()
        rows = self.database.run(
            lambda tx: tx.fetch(
                "SELECT * FROM feedback WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after_id, settled, limit),
            )
        )
        return [_from_row(row) for row in rows]

    def _settled_id(self) -> int:
        """The highest id below which no transaction is still inserting. On SQLite writers
        take turns, so ids commit in order and every id is settled. On PostgreSQL an
        identity hands ids out in order but submits of several replicas commit in any
        order: taking SETTLED_IDS_LOCK exclusively waits for the submits in flight (they
        hold it shared) and holds back new ones, so the highest id then is settled; later
        submits take higher ids."""

        if self.database.engine == "sqlite":
            return EVERY_ID

        def read(tx: Transaction) -> int:
            tx.fetch("SELECT pg_advisory_xact_lock(?)", (SETTLED_IDS_LOCK,))
            row = tx.fetch_one("SELECT COALESCE(MAX(id), 0) AS id FROM feedback")
            return int(row["id"]) if row else 0

        return self.database.run(read)

    def export(self) -> tuple[bytes, int, int]:
        """Every record as JSON lines, oldest first: (content, count, newest id)."""
        records = self.list(after_id=0, limit=2**62)
        content = to_jsonl(records)
        return content, len(records), records[-1].id if records else 0

    def count(self) -> int:
        row = self.database.run(lambda tx: tx.fetch_one("SELECT COUNT(*) AS n FROM feedback"))
        return int(row["n"]) if row else 0

    def stats(self, after_count: int = 0) -> FeedbackStats:
        """Counts, and what came after the first ``after_count`` records (by position:
        records are never deleted, so a count is a point in the store's history)."""
        if after_count < 0:
            raise InvalidArgument({"after_count": "must not be negative"})

        def read(tx: Transaction) -> tuple[Row | None, Row | None, dict[str, int], Row | None]:
            first_new = tx.fetch_one(
                "SELECT created_at FROM feedback ORDER BY id LIMIT 1 OFFSET ?", (after_count,)
            )
            latest = tx.fetch_one("SELECT created_at FROM feedback ORDER BY id DESC LIMIT 1")
            by_label = {
                row["user_label"]: int(row["n"])
                for row in tx.fetch(
                    "SELECT user_label, COUNT(*) AS n FROM feedback GROUP BY user_label"
                )
            }
            totals = tx.fetch_one(
                "SELECT COUNT(*) AS total,"
                " COALESCE(SUM(CASE WHEN model_prediction != ''"
                "   AND model_prediction != user_label THEN 1 ELSE 0 END), 0) AS disagreements,"
                " COALESCE(SUM(CASE WHEN model_prediction != '' THEN 1 ELSE 0 END), 0)"
                "   AS with_prediction,"
                " COALESCE(SUM(CASE WHEN audit THEN 1 ELSE 0 END), 0) AS audit,"
                " COALESCE(MAX(id), 0) AS latest_id FROM feedback"
            )
            return first_new, latest, by_label, totals

        # One transaction: one snapshot on SQLite; on PostgreSQL (READ COMMITTED) each
        # statement reads its own, so records arriving meanwhile may show in some counts.
        first_new, latest, by_label, row = self.database.run(read)
        assert row is not None
        total = int(row["total"])
        return FeedbackStats(
            total=total,
            by_label=by_label,
            disagreements=int(row["disagreements"]),
            with_model_prediction=int(row["with_prediction"]),
            latest_id=int(row["latest_id"]),
            new_count=max(0, total - after_count),
            first_new_at=stored_time(first_new["created_at"]) if first_new else None,
            latest_at=stored_time(latest["created_at"]) if latest else None,
            audit=int(row["audit"]),
        )

    def answered(
        self, prediction_ids: Collection[str], texts: Collection[str]
    ) -> tuple[set[str], set[str]]:
        """Which of ``prediction_ids`` have feedback citing them, and which of ``texts``
        have feedback (cited or not: the original API's feedback carries only a text)."""

        def read(tx: Transaction) -> tuple[set[str], set[str]]:
            ids: set[str] = set()
            labelled_texts: set[str] = set()
            for chunk in _chunks([i for i in prediction_ids if i]):
                ids.update(
                    row["prediction_id"]
                    for row in tx.fetch(
                        "SELECT DISTINCT prediction_id FROM feedback WHERE prediction_id IN"
                        f" ({_marks(chunk)})",
                        chunk,
                    )
                )
            for chunk in _chunks(texts):
                labelled_texts.update(
                    row["text"]
                    for row in tx.fetch(
                        f"SELECT DISTINCT text FROM feedback WHERE text IN ({_marks(chunk)})",
                        chunk,
                    )
                )
            return ids, labelled_texts

        return self.database.run(read)

    def issue_audit_requests(self, prediction_ids: Collection[str]) -> None:
        """Records the audit samples handed out (durably; one already issued keeps its
        first time), so that feedback citing them is marked ``audit``."""
        if not prediction_ids:
            return
        issued_at = datetime.now(UTC).isoformat()
        self.database.run(
            lambda tx: tx.execute_many(
                "INSERT INTO audit_requests (prediction_id, issued_at) VALUES (?, ?)"
                " ON CONFLICT (prediction_id) DO NOTHING",
                [(prediction_id, issued_at) for prediction_id in sorted(set(prediction_ids))],
            ),
            write=True,
            idempotent=True,
        )

    def audit_requests(self, prediction_ids: Collection[str]) -> Sequence[str]:
        """Which of ``prediction_ids`` were handed out as audit samples, first issued first."""

        def read(tx: Transaction) -> set[tuple[datetime, str]]:
            issued: set[tuple[datetime, str]] = set()
            for chunk in _chunks(prediction_ids):
                issued.update(
                    (stored_time(row["issued_at"]), row["prediction_id"])
                    for row in tx.fetch(
                        "SELECT prediction_id, issued_at FROM audit_requests"
                        f" WHERE prediction_id IN ({_marks(chunk)})",
                        chunk,
                    )
                )
            return issued

        return [prediction_id for _, prediction_id in sorted(self.database.run(read))]


Row = dict[str, Any]


def _chunks(values: Collection[str]) -> list[list[str]]:
    unique = sorted(set(values))
    return [unique[i : i + _IN_CHUNK] for i in range(0, len(unique), _IN_CHUNK)]


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" * len(values))


def _from_row(row: Row) -> Feedback:
    return Feedback(
        id=int(row["id"]),
        text=row["text"],
        model_prediction=row["model_prediction"],
        user_label=row["user_label"],
        prediction_id=row["prediction_id"],
        model_version=row["model_version"],
        created_at=stored_time(row["created_at"]),
        audit=bool(row["audit"]),
    )
