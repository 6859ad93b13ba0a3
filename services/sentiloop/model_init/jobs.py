"""Training jobs and their state, kept in SQLite so that a restart loses nothing."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sentiloop.core import sqlite
from sentiloop.core.errors import InvalidArgument, NotFound
from sentiloop.core.training import TrainingJob
from sentiloop.core.vocabulary import JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
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
);
"""

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
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite.connect(path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, job: TrainingJob) -> TrainingJob:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (name, status, secondary_status, created_at, auto_deploy,"
                " backend, preset, source, dataset_hash, channels, hyperparameters)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.name,
                    job.status,
                    job.secondary_status,
                    job.created_at.isoformat(),
                    int(job.auto_deploy),
                    job.backend,
                    job.preset,
                    job.source,
                    job.dataset_hash,
                    json.dumps(job.channels),
                    json.dumps(job.hyperparameters),
                ),
            )
        return job

    def save(self, job: TrainingJob) -> TrainingJob:
        with self._lock:
            self._db.execute(
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
                    int(job.auto_deploy),
                    job.deployed_version,
                    job.attempts,
                    job.name,
                ),
            )
        return job

    def get(self, name: str) -> TrainingJob:
        check_job_name(name)
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"training job {name!r} does not exist")
        return _from_row(row)

    def recent(self, limit: int = 100) -> list[TrainingJob]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_from_row(row) for row in rows]

    def unfinished(self) -> list[TrainingJob]:
        """Jobs a restart must pick up again: still running, or completed with an
        auto-deploy that has not happened yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?)"
                " OR (status = ? AND auto_deploy = 1 AND deployed_version = '')"
                " ORDER BY created_at",
                (JobStatus.IN_PROGRESS, JobStatus.STOPPING, JobStatus.COMPLETED),
            ).fetchall()
        return [_from_row(row) for row in rows]


def _from_row(row: sqlite3.Row) -> TrainingJob:
    return TrainingJob(
        name=row["name"],
        status=row["status"],
        backend=row["backend"],
        created_at=datetime.fromisoformat(row["created_at"]),
        secondary_status=row["secondary_status"],
        ended_at=datetime.fromisoformat(row["ended_at"]) if row["ended_at"] else None,
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
        attempts=row["attempts"],
    )


def now() -> datetime:
    return datetime.now(UTC)


__all__ = ["JobStore", "TrainingJob", "check_job_name", "now", "replace"]
