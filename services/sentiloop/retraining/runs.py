"""Retraining runs, in the service's database (core/db.py: SQLite or PostgreSQL): at most
one runs at a time, enforced by a partial unique index, so it holds across concurrent
calls, restarts and replicas; the policy's counters come from here rather than from
memory.

A run belongs to the process that began it (``owner``), which renews ``heartbeat_at``
while the run lasts. A run whose owner stopped renewing it (the process died) is
interrupted by whichever replica looks next, which frees the slot; a replica starting
beside a live one leaves that one's run alone."""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sentiloop.core.db import Database, Migration, Row, SQLiteDatabase, Transaction, stored_time
from sentiloop.core.errors import AlreadyExists

# The owner renews its run this often; a run not renewed for LEASE_SECONDS is deemed
# abandoned (a few missed renewals: a slow database must not cost a live run its slot).
HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0

MIGRATIONS = (
    Migration(
        1,
        "runs, and the partial unique index that lets one run at a time",
        sqlite=(
            # IF NOT EXISTS: a file made before the migration runner is adopted as it is.
            """CREATE TABLE IF NOT EXISTS runs (
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
            )""",
            "CREATE UNIQUE INDEX IF NOT EXISTS one_running_run ON runs (status)"
            " WHERE status = 'running'",
        ),
        postgresql=(
            """CREATE TABLE runs (
                id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                status         TEXT NOT NULL,
                trigger        TEXT NOT NULL,
                job_name       TEXT NOT NULL DEFAULT '',
                feedback_total BIGINT NOT NULL,
                recipe         TEXT NOT NULL,
                seed           BIGINT NOT NULL,
                force          BOOLEAN NOT NULL DEFAULT FALSE,
                started_at     TIMESTAMPTZ NOT NULL,
                ended_at       TIMESTAMPTZ,
                result         TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE UNIQUE INDEX one_running_run ON runs (status) WHERE status = 'running'",
        ),
    ),
    Migration(
        2,
        "the process that owns a run and when it last renewed it (replicas)",
        sqlite=(
            "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE runs ADD COLUMN heartbeat_at TEXT",
        ),
        postgresql=(
            "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMPTZ",
        ),
    ),
)


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
    owner: str = ""


class RunStore:
    """``database``: an opened database (core/db.py), or the path of a SQLite file."""

    def __init__(self, database: Database | Path) -> None:
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        # Unique per process and per store: a restarted process is a new owner.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        try:
            self.database.migrate("runs", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def begin(self, trigger: str, feedback_total: int, recipe: str, seed: int, force: bool) -> Run:
        now = _now()

        def insert(tx: Transaction) -> Row | None:
            # The partial unique index decides, in the database, whoever asks: a second
            # 'running' row is not inserted (and on PostgreSQL a concurrent insert waits
            # for the first to commit or roll back before it is turned away).
            return tx.fetch_one(
                "INSERT INTO runs (status, trigger, feedback_total, recipe, seed, force,"
                " started_at, owner, heartbeat_at)"
                " VALUES ('running', ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING *",
                (trigger, feedback_total, recipe, seed, force, now, self.owner, now),
            )

        row = self.database.run(insert, write=True)
        if row is not None:
            return _from_row(row)
        running = self.running()
        job = running.job_name if running else ""
        raise AlreadyExists(
            f"a retraining run is already in progress (training job {job})"
            if job
            else "a retraining run is already in progress (preparing its data)"
        )

    def set_job(self, run_id: int, job_name: str) -> None:
        self.database.run(
            lambda tx: tx.execute("UPDATE runs SET job_name = ? WHERE id = ?", (job_name, run_id)),
            write=True,
            idempotent=True,
        )

    def heartbeat(self, run_id: int) -> bool:
        """Renews this process's claim on its run; False when the run is no longer running
        under this owner (finished, or interrupted as abandoned)."""
        changed = self.database.run(
            lambda tx: tx.execute(
                "UPDATE runs SET heartbeat_at = ?"
                " WHERE id = ? AND status = 'running' AND owner = ?",
                (_now(), run_id, self.owner),
            ),
            write=True,
            idempotent=True,
        )
        return changed > 0

    def finish(self, run_id: int, status: str, result: dict[str, Any]) -> None:
        self.database.run(
            lambda tx: tx.execute(
                "UPDATE runs SET status = ?, ended_at = ?, result = ? WHERE id = ?",
                (status, _now(), json.dumps(result), run_id),
            ),
            write=True,
            idempotent=True,
        )

    def interrupt(self, *, stale_after: float | None) -> list[Run]:
        """Ends as failed the running run of another owner that has not been renewed for
        ``stale_after`` seconds (None: whoever owns it, however fresh); the runs ended."""
        ended_at = datetime.now(UTC)

        where = "status = 'running' AND owner != ?"
        params: list[Any] = [self.owner]
        if stale_after is not None:
            cutoff = (ended_at - timedelta(seconds=stale_after)).isoformat()
            # No heartbeat: a run begun before owners were recorded.
            where += " AND (heartbeat_at IS NULL OR heartbeat_at < ?)"
            params.append(cutoff)
        # The policy loop looks every few seconds: a read, and a write only when needed.
        if not self.database.run(lambda tx: tx.fetch(f"SELECT id FROM runs WHERE {where}", params)):
            return []

        def end(tx: Transaction) -> list[Row]:
            # One statement: on PostgreSQL a renewal committed meanwhile is seen (the
            # condition is checked again on the newest row version), never overwritten.
            rows = tx.fetch(
                f"UPDATE runs SET status = 'failed', ended_at = ? WHERE {where} RETURNING *",
                [ended_at.isoformat(), *params],
            )
            for row in rows:
                row["result"] = json.dumps(
                    {
                        "error": f"interrupted: its process ({row['owner'] or 'unknown'})"
                        f" stopped (training job {row['job_name'] or 'none'})"
                    }
                )
                tx.execute("UPDATE runs SET result = ? WHERE id = ?", (row["result"], row["id"]))
            return rows

        return [_from_row(row) for row in self.database.run(end, write=True, idempotent=True)]

    def running(self) -> Run | None:
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT * FROM runs WHERE status = 'running'")
        )
        return _from_row(row) if row else None

    def last(self) -> Run | None:
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT * FROM runs ORDER BY id DESC LIMIT 1")
        )
        return _from_row(row) if row else None

    def last_automatic(self) -> Run | None:
        row = self.database.run(
            lambda tx: tx.fetch_one(
                "SELECT * FROM runs WHERE trigger IN ('policy', 'drift') ORDER BY id DESC LIMIT 1"
            )
        )
        return _from_row(row) if row else None

    def get(self, run_id: int) -> Run:
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT * FROM runs WHERE id = ?", (run_id,))
        )
        if row is None:
            raise KeyError(run_id)
        return _from_row(row)

    def close(self) -> None:
        self.database.close()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _from_row(row: Row) -> Run:
    return Run(
        id=int(row["id"]),
        status=row["status"],
        trigger=row["trigger"],
        job_name=row["job_name"],
        feedback_total=int(row["feedback_total"]),
        recipe=row["recipe"],
        seed=int(row["seed"]),
        force=bool(row["force"]),
        started_at=stored_time(row["started_at"]),
        ended_at=stored_time(row["ended_at"]) if row["ended_at"] else None,
        result=json.loads(row["result"]),
        owner=row["owner"],
    )
