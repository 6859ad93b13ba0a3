"""Retraining runs, in SQLite: at most one runs at a time (enforced by a unique index,
so it holds across concurrent calls and restarts), and the policy's counters come
from here rather than from memory."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentiloop.core import sqlite
from sentiloop.core.errors import AlreadyExists

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    status         TEXT NOT NULL,
    trigger        TEXT NOT NULL,
    job_name       TEXT NOT NULL DEFAULT '',
    feedback_total INTEGER NOT NULL,
    recipe         TEXT NOT NULL,
    seed           INTEGER NOT NULL,
    force          INTEGER NOT NULL DEFAULT 0,
    started_at     TEXT NOT NULL,
    ended_at       TEXT,
    result         TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX IF NOT EXISTS one_running_run ON runs (status) WHERE status = 'running';
"""


@dataclass(frozen=True)
class Run:
    id: int
    status: str
    trigger: str
    job_name: str
    feedback_total: int
    recipe: str
    seed: int
    force: bool
    started_at: datetime
    ended_at: datetime | None
    result: dict[str, Any]


class RunStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        self._db.executescript(SCHEMA)

    def begin(self, trigger: str, feedback_total: int, recipe: str, seed: int, force: bool) -> Run:
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO runs (status, trigger, feedback_total, recipe, seed, force,"
                    " started_at) VALUES ('running', ?, ?, ?, ?, ?, ?)",
                    (
                        trigger,
                        feedback_total,
                        recipe,
                        seed,
                        int(force),
                        datetime.now(UTC).isoformat(),
                    ),
                )
            except sqlite3.IntegrityError:
                running = self._running_locked()
                job = running.job_name if running else ""
                raise AlreadyExists(
                    f"a retraining run is already in progress (training job {job})"
                    if job
                    else "a retraining run is already in progress (preparing its data)"
                ) from None
            return self._get_locked(int(cursor.lastrowid or 0))

    def set_job(self, run_id: int, job_name: str) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET job_name = ? WHERE id = ?", (job_name, run_id))

    def finish(self, run_id: int, status: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET status = ?, ended_at = ?, result = ? WHERE id = ?",
                (status, datetime.now(UTC).isoformat(), json.dumps(result), run_id),
            )

    def running(self) -> Run | None:
        with self._lock:
            return self._running_locked()

    def last(self) -> Run | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            return _from_row(row) if row else None

    def last_automatic(self) -> Run | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM runs WHERE trigger IN ('policy', 'drift') ORDER BY id DESC LIMIT 1"
            ).fetchone()
            return _from_row(row) if row else None

    def get(self, run_id: int) -> Run:
        with self._lock:
            return self._get_locked(run_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _running_locked(self) -> Run | None:
        row = self._db.execute("SELECT * FROM runs WHERE status = 'running'").fetchone()
        return _from_row(row) if row else None

    def _get_locked(self, run_id: int) -> Run:
        return _from_row(self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())


def _from_row(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        status=row["status"],
        trigger=row["trigger"],
        job_name=row["job_name"],
        feedback_total=row["feedback_total"],
        recipe=row["recipe"],
        seed=row["seed"],
        force=bool(row["force"]),
        started_at=datetime.fromisoformat(row["started_at"]),
        ended_at=datetime.fromisoformat(row["ended_at"]) if row["ended_at"] else None,
        result=json.loads(row["result"]),
    )
