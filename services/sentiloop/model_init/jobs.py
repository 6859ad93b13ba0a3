"""Training jobs and their state, kept in SQLite or PostgreSQL (core/db.py) so that a
restart loses nothing."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sentiloop.core.db import Database, Migration, Row, SQLiteDatabase, Transaction, stored_time
from sentiloop.core.errors import AlreadyExists, InvalidArgument, NotFound
from sentiloop.core.training import TrainingJob
from sentiloop.core.vocabulary import JobStatus

# A SQLite file made before the migration runner has the table already: IF NOT EXISTS
# makes migration 1 a no-op on it.
MIGRATIONS = (
    Migration(
        1,
        "training jobs",
        sqlite=(
            """CREATE TABLE IF NOT EXISTS jobs (
                name               TEXT PRIMARY KEY,
                status             TEXT NOT NULL,
                secondary_status   TEXT NOT NULL DEFAULT '',
                created_at         TEXT NOT NULL,
                ended_at           TEXT,
                artifact           TEXT NOT NULL DEFAULT '',
                failure_reason     TEXT NOT NULL DEFAULT '',
                progress           TEXT NOT NULL DEFAULT '{}',
                metrics            TEXT NOT NULL DEFAULT '{}',
                final_metrics      TEXT NOT NULL DEFAULT '{}',
                auto_deploy        INTEGER NOT NULL DEFAULT 0,
                deployed_version   TEXT NOT NULL DEFAULT '',
                backend            TEXT NOT NULL,
                preset             TEXT NOT NULL DEFAULT '',
                source             TEXT NOT NULL DEFAULT 'bootstrap',
                dataset_hash       TEXT NOT NULL DEFAULT '',
                channels           TEXT NOT NULL DEFAULT '{}',
                hyperparameters    TEXT NOT NULL DEFAULT '{}',
                attempts           INTEGER NOT NULL DEFAULT 1
            )""",
        ),
        postgresql=(
            """CREATE TABLE jobs (
                name               TEXT PRIMARY KEY,
                status             TEXT NOT NULL,
                secondary_status   TEXT NOT NULL DEFAULT '',
                created_at         TIMESTAMPTZ NOT NULL,
                ended_at           TIMESTAMPTZ,
                artifact           TEXT NOT NULL DEFAULT '',
                failure_reason     TEXT NOT NULL DEFAULT '',
                progress           TEXT NOT NULL DEFAULT '{}',
                metrics            TEXT NOT NULL DEFAULT '{}',
                final_metrics      TEXT NOT NULL DEFAULT '{}',
                auto_deploy        BOOLEAN NOT NULL DEFAULT FALSE,
                deployed_version   TEXT NOT NULL DEFAULT '',
                backend            TEXT NOT NULL,
                preset             TEXT NOT NULL DEFAULT '',
                source             TEXT NOT NULL DEFAULT 'bootstrap',
                dataset_hash       TEXT NOT NULL DEFAULT '',
                channels           TEXT NOT NULL DEFAULT '{}',
                hyperparameters    TEXT NOT NULL DEFAULT '{}',
                attempts           INTEGER NOT NULL DEFAULT 1
            )""",
            # recent() and unfinished() read in creation order.
            "CREATE INDEX jobs_created_at ON jobs (created_at)",
        ),
    ),
)

# SageMaker's rule for training job names; it also keeps names safe as folder names.
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def check_job_name(name: str) -> str:
    if not JOB_NAME.fullmatch(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise InvalidArgument(
            {
                "job_name": f"{shown!r} is not a job name: 1-63 letters, digits and"
                " hyphens, starting with a letter or digit"
            }
        )
    return name


class JobStore:
    """``database``: an opened database (core/db.py), or the path of a SQLite file."""

    def __init__(self, database: Database | Path) -> None:
        self.database = SQLiteDatabase(database) if isinstance(database, Path) else database
        try:
            self.database.migrate("model_init", MIGRATIONS)
        except BaseException:
            self.database.close()
            raise

    def close(self) -> None:
        self.database.close()

    def create(self, job: TrainingJob) -> TrainingJob:
        def insert(tx: Transaction) -> int:
            return tx.execute(
                "INSERT INTO jobs (name, status, secondary_status, created_at, auto_deploy,"
                " backend, preset, source, dataset_hash, channels, hyperparameters)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (
                    job.name,
                    job.status,
                    job.secondary_status,
                    job.created_at.isoformat(),
                    job.auto_deploy,
                    job.backend,
                    job.preset,
                    job.source,
                    job.dataset_hash,
                    json.dumps(job.channels),
                    json.dumps(job.hyperparameters),
                ),
            )

        if not self.database.run(insert, write=True):
            raise AlreadyExists(f"training job {job.name!r} exists already")
        return job

    def save(self, job: TrainingJob) -> TrainingJob:
        def update(tx: Transaction) -> None:
            tx.execute(
                "UPDATE jobs SET status = ?, secondary_status = ?, ended_at = ?, artifact = ?,"
                " failure_reason = ?, progress = ?, metrics = ?, final_metrics = ?,"
                " auto_deploy = ?, deployed_version = ?, attempts = ? WHERE name = ?",
                (
                    job.status,
                    job.secondary_status,
                    job.ended_at.isoformat() if job.ended_at else None,
                    job.artifact,
                    job.failure_reason,
                    json.dumps(job.progress),
                    json.dumps(job.metrics),
                    json.dumps(job.final_metrics),
                    job.auto_deploy,
                    job.deployed_version,
                    job.attempts,
                    job.name,
                ),
            )

        # Idempotent: the whole state is written, so writing it twice is writing it once.
        self.database.run(update, write=True, idempotent=True)
        return job

    def get(self, name: str) -> TrainingJob:
        check_job_name(name)
        row = self.database.run(
            lambda tx: tx.fetch_one("SELECT * FROM jobs WHERE name = ?", (name,))
        )
        if row is None:
            raise NotFound(f"training job {name!r} does not exist")
        return _from_row(row)

    def recent(self, limit: int = 100) -> list[TrainingJob]:
        rows = self.database.run(
            lambda tx: tx.fetch("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        )
        return [_from_row(row) for row in rows]

    def unfinished(self) -> list[TrainingJob]:
        """Jobs a restart must pick up again: still running, or completed with an
        auto-deploy that has not happened yet."""
        rows = self.database.run(
            lambda tx: tx.fetch(
                "SELECT * FROM jobs WHERE status IN (?, ?)"
                " OR (status = ? AND auto_deploy AND deployed_version = '')"
                " ORDER BY created_at",
                (JobStatus.IN_PROGRESS, JobStatus.STOPPING, JobStatus.COMPLETED),
            )
        )
        return [_from_row(row) for row in rows]


def _from_row(row: Row) -> TrainingJob:
    return TrainingJob(
        name=row["name"],
        status=row["status"],
        backend=row["backend"],
        created_at=stored_time(row["created_at"]),
        secondary_status=row["secondary_status"],
        ended_at=stored_time(row["ended_at"]) if row["ended_at"] else None,
        artifact=row["artifact"],
        failure_reason=row["failure_reason"],
        progress=json.loads(row["progress"]),
        metrics=json.loads(row["metrics"]),
        final_metrics=json.loads(row["final_metrics"]),
        auto_deploy=bool(row["auto_deploy"]),
        deployed_version=row["deployed_version"],
        preset=row["preset"],
        source=row["source"],
        dataset_hash=row["dataset_hash"],
        channels=json.loads(row["channels"]),
        hyperparameters=json.loads(row["hyperparameters"]),
        attempts=int(row["attempts"]),
    )


def now() -> datetime:
    return datetime.now(UTC)


__all__ = ["JobStore", "TrainingJob", "check_job_name", "now", "replace"]
