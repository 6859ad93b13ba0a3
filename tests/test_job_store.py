"""ModelInit's training-job store on its own, on SQLite and on a real PostgreSQL server
(tests/postgres.py): what a restart must find again, in order, exactly as saved."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sentiloop.core.db import open_database
from sentiloop.core.errors import AlreadyExists, InvalidArgument, NotFound
from sentiloop.core.training import TrainingJob
from sentiloop.core.vocabulary import JobStatus
from sentiloop.model_init.jobs import JobStore

OpenJobs = Callable[[], JobStore]
START = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def open_jobs(database_url: str, tmp_path: Path) -> Iterator[OpenJobs]:
    opened: list[JobStore] = []

    def open_one() -> JobStore:
        store = JobStore(open_database(database_url, tmp_path / "unused.db", schema="model_init"))
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def job(name: str, minutes: int = 0, **fields: object) -> TrainingJob:
    return replace(
        TrainingJob(
            name=name,
            status=JobStatus.IN_PROGRESS,
            backend="local",
            created_at=START + timedelta(minutes=minutes),
            secondary_status="Starting",
            auto_deploy=True,
            preset="tiny",
            source="retraining",
            dataset_hash="abc",
            channels={"train": "datasets/a/train/"},
            hyperparameters={"epochs": "1"},
        ),
        **fields,
    )


def test_jobs_survive_reopening_exactly(open_jobs: OpenJobs) -> None:
    store = open_jobs()
    created = store.create(job("job-a"))
    finished = replace(
        created,
        status=JobStatus.COMPLETED,
        secondary_status=JobStatus.COMPLETED,
        ended_at=START + timedelta(minutes=5),
        artifact="models/job-a/model.tar.gz",
        progress={"epoch": 1.0},
        metrics={"loss": 0.25},
        final_metrics={"test": {"accuracy": 0.9}},
        deployed_version="v3",
        attempts=2,
    )
    store.save(finished)
    store.close()
    reopened = open_jobs()
    assert reopened.get("job-a") == finished  # timestamps round-trip, in UTC
    assert reopened.get("job-a").created_at.utcoffset() == timedelta(0)
    with pytest.raises(NotFound):
        reopened.get("job-b")
    with pytest.raises(InvalidArgument):
        reopened.get("../etc")


def test_a_job_name_is_created_once(open_jobs: OpenJobs) -> None:
    store, replica = open_jobs(), open_jobs()
    store.create(job("job-a"))
    with pytest.raises(AlreadyExists):
        replica.create(job("job-a", minutes=1, preset="small"))
    assert replica.get("job-a").preset == "tiny"


def test_recent_and_unfinished_in_creation_order(open_jobs: OpenJobs) -> None:
    store = open_jobs()
    running = store.create(job("running", 1))
    store.create(job("stopping", 2, status=JobStatus.STOPPING))
    deployed = store.create(job("deployed", 3))
    store.save(replace(deployed, status=JobStatus.COMPLETED, deployed_version="v1"))
    waiting = store.create(job("waiting", 4))
    store.save(replace(waiting, status=JobStatus.COMPLETED))
    manual = store.create(job("manual", 5, auto_deploy=False))
    store.save(replace(manual, status=JobStatus.COMPLETED))
    failed = store.create(job("failed", 0))
    store.save(replace(failed, status=JobStatus.FAILED, failure_reason="boom"))
    assert [j.name for j in store.recent()] == [
        "manual",
        "waiting",
        "deployed",
        "stopping",
        "running",
        "failed",
    ]
    assert [j.name for j in store.recent(limit=2)] == ["manual", "waiting"]
    assert [j.name for j in store.unfinished()] == ["running", "stopping", "waiting"]
    assert store.unfinished()[0] == running


def test_a_job_file_from_before_the_migration_runner_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:  # the table as the store created it before
        db.execute(
            "CREATE TABLE jobs (name TEXT PRIMARY KEY, status TEXT NOT NULL,"
            " secondary_status TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL,"
            " ended_at TEXT, artifact TEXT NOT NULL DEFAULT '',"
            " failure_reason TEXT NOT NULL DEFAULT '', progress TEXT NOT NULL DEFAULT '{}',"
            " metrics TEXT NOT NULL DEFAULT '{}', final_metrics TEXT NOT NULL DEFAULT '{}',"
            " auto_deploy INTEGER NOT NULL DEFAULT 0, deployed_version TEXT NOT NULL DEFAULT '',"
            " backend TEXT NOT NULL, preset TEXT NOT NULL DEFAULT '',"
            " source TEXT NOT NULL DEFAULT 'bootstrap', dataset_hash TEXT NOT NULL DEFAULT '',"
            " channels TEXT NOT NULL DEFAULT '{}', hyperparameters TEXT NOT NULL DEFAULT '{}',"
            " attempts INTEGER NOT NULL DEFAULT 1)"
        )
        db.execute(
            "INSERT INTO jobs (name, status, created_at, auto_deploy, backend)"
            " VALUES ('old', 'Completed', ?, 1, 'local')",
            (START.isoformat(),),
        )
    db.close()
    store = JobStore(open_database(None, path))
    [old] = store.unfinished()
    assert (old.name, old.auto_deploy, old.created_at) == ("old", True, START)
    store.close()
    store = JobStore(path)  # a path still opens the SQLite file
    assert [j.name for j in store.recent()] == ["old"]
    store.close()
