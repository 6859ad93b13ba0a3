"""Evaluation reports kept over time (domain logic)."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core import sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    model_version TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    report        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_by_version ON evaluations (model_version, seq);
"""


@dataclass(frozen=True)
class Report:
    id: str
    model_version: str
    created_at: datetime
    feedback: dict[str, Any]  # metrics on the collected feedback
    test: dict[str, Any]  # metrics on the held-out test set
    feedback_count: int


class ReportStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        self._db.executescript(SCHEMA)

    def add(
        self, model_version: str, feedback: dict[str, Any], test: dict[str, Any], count: int
    ) -> Report:
        report = Report(uuid.uuid4().hex, model_version, datetime.now(UTC), feedback, test, count)
        body = json.dumps({"feedback": feedback, "test": test, "feedback_count": count})
        with self._lock:
            self._db.execute(
                "INSERT INTO evaluations (id, model_version, created_at, report)"
                " VALUES (?, ?, ?, ?)",
                (report.id, model_version, report.created_at.isoformat(), body),
            )
        return report

    def recent(self, model_version: str = "", limit: int = 100) -> list[Report]:
        query = "SELECT * FROM evaluations"
        args: tuple[Any, ...] = ()
        if model_version:
            query += " WHERE model_version = ?"
            args = (model_version,)
        with self._lock:
            rows = self._db.execute(f"{query} ORDER BY seq DESC LIMIT ?", (*args, limit))
            result = []
            for row in rows.fetchall():
                body = json.loads(row["report"])
                result.append(
                    Report(
                        id=row["id"],
                        model_version=row["model_version"],
                        created_at=datetime.fromisoformat(row["created_at"]),
                        feedback=body["feedback"],
                        test=body["test"],
                        feedback_count=body["feedback_count"],
                    )
                )
        return result

    def close(self) -> None:
        with self._lock:
            self._db.close()
