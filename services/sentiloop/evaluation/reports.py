"""Evaluation reports kept over time (domain logic)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core.db import Database, Migration, SQLiteDatabase, Transaction, stored_time

MIGRATIONS = (
    Migration(
        1,
        "evaluation reports",
        sqlite=(
            # IF NOT EXISTS: a file made before the migration runner is adopted as it is.
            """CREATE TABLE IF NOT EXISTS evaluations (
                seq           INTEGER PRIMARY KEY AUTOINCREMENT,
                id            TEXT NOT NULL UNIQUE,
                model_version TEXT NOT NULL,
                created_at    TEXT NOT NULL,
                report        TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS evaluations_by_version ON evaluations (model_version, seq)",
        ),
        postgresql=(
            """CREATE TABLE evaluations (
                seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id            TEXT NOT NULL UNIQUE,
                model_version TEXT NOT NULL,
                created_at    TIMESTAMPTZ NOT NULL,
                report        TEXT NOT NULL
            )""",
            "CREATE INDEX evaluations_by_version ON evaluations (model_version, seq)",
        ),
    ),
)


@dataclass(frozen=True)
class Report:
    id: str
    model_version: str
    created_at: datetime
    feedback: dict[str, Any]  # metrics on the collected feedback
    test: dict[str, Any]  # metrics on the held-out test set
    feedback_count: int


class ReportStore:
    """``database``: an opened database (core/db.py), or the path of a SQLite file."""

    def __init__(self, database: Database | Path) -> None:
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        try:
            self.database.migrate("evaluations", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def add(
        self, model_version: str, feedback: dict[str, Any], test: dict[str, Any], count: int
    ) -> Report:
        report = Report(uuid.uuid4().hex, model_version, datetime.now(UTC), feedback, test, count)
        body = json.dumps({"feedback": feedback, "test": test, "feedback_count": count})
        # The id is the report's own: a retry after a lost commit answer stores it once.
        self.database.run(
            lambda tx: tx.execute(
                "INSERT INTO evaluations (id, model_version, created_at, report)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (report.id, model_version, report.created_at.isoformat(), body),
            ),
            write=True,
            idempotent=True,
        )
        return report

    def recent(self, model_version: str = "", limit: int = 100) -> list[Report]:
        query = "SELECT * FROM evaluations"
        args: tuple[Any, ...] = ()
        if model_version:
            query += " WHERE model_version = ?"
            args = (model_version,)

        def read(tx: Transaction) -> list[dict[str, Any]]:
            return tx.fetch(f"{query} ORDER BY seq DESC LIMIT ?", (*args, limit))

        result = []
        for row in self.database.run(read):
            body = json.loads(row["report"])
            created_at = row["created_at"]
            result.append(
                Report(
                    id=row["id"],
                    model_version=row["model_version"],
                    created_at=stored_time(created_at),
                    feedback=body["feedback"],
                    test=body["test"],
                    feedback_count=body["feedback_count"],
                )
            )
        return result

    def close(self) -> None:
        self.database.close()
