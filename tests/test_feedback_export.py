"""Feedback exported to S3 (SeaweedFS) exactly once: the exporter on its own (crash
between the write and the mark, day partitions, conflicts), then the mesh through an
object-store outage."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from postgres import PostgresServer
from seaweed import SeaweedS3, running_seaweed

from sentiloop.core.config import load_settings
from sentiloop.core.db import open_database
from sentiloop.core.objectstore import LocalObjectStore, ObjectStore
from sentiloop.core.s3store import S3ObjectStore, S3Settings, make_client
from sentiloop.feedback import store as store_module
from sentiloop.feedback.export import ExportConfig, ExportConflict, FeedbackExporter
from sentiloop.feedback.store import FeedbackStore, NewFeedback
from sentiloop.testing import RunningMesh, start_mesh, wait_for

EXPORTS = "feedback/exports/"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def bucket(seaweed: SeaweedS3) -> str:
    name = f"fb-{uuid.uuid4().hex[:12]}"
    seaweed.create_bucket(name)
    return name


@pytest.fixture
def objects(seaweed: SeaweedS3, bucket: str, monkeypatch: pytest.MonkeyPatch) -> S3ObjectStore:
    for name, value in seaweed.sentiloop_env(bucket).items():
        monkeypatch.setenv(name, value)
    settings = S3Settings(bucket=bucket, endpoint_url=seaweed.endpoint_url, max_attempts=2)
    return S3ObjectStore(make_client(settings), bucket, "app")


@pytest.fixture(params=["sqlite", "postgresql"])
def feedback(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeedbackStore]:
    """The store with the export progress beside its records, on either engine."""
    if request.param == "sqlite":
        store = FeedbackStore(tmp_path / "feedback.db", 5000)
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        store = FeedbackStore(open_database(server.create_database(), Path("unused")), 5000)
    yield store
    store.close()


def submit(store: FeedbackStore, count: int, tag: str = "r") -> None:
    for i in range(count):
        store.submit(NewFeedback(text=f"{tag} {i}", user_label="positive"))


def exported_ids(read: Callable[[str], bytes], keys: list[str]) -> list[int]:
    ids = []
    for key in keys:
        for line in read(key).decode().splitlines():
            ids.append(json.loads(line)["id"])
    return ids


def exporter_for(
    feedback: FeedbackStore, objects: ObjectStore, batch: int = 1000
) -> FeedbackExporter:
    return FeedbackExporter(
        feedback, objects, ExportConfig(enabled=True, interval_seconds=5.0, batch_size=batch)
    )


def test_a_crash_between_the_write_and_the_mark_exports_nothing_twice(
    feedback: FeedbackStore,
    objects: S3ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submit(feedback, 5)
    first = exporter_for(feedback, objects)

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt("crashed after the write, before the mark")

    monkeypatch.setattr(first, "_advance", crash)
    with pytest.raises(KeyboardInterrupt):
        first.export_once()
    first.close()
    keys = objects.list(EXPORTS)
    day = datetime.now(UTC).date().isoformat()
    assert keys == [f"{EXPORTS}date={day}/feedback-000000000001-000000000005.jsonl"]

    submit(feedback, 3, "later")  # arrives while "down"
    restarted = exporter_for(feedback, objects)
    assert restarted.state().pending == (1, 5, keys[0])
    done = restarted.export_pending()
    assert [(d.first_id, d.last_id) for d in done] == [(1, 5), (6, 8)]
    assert restarted.state().exported_through == 8 and restarted.state().pending is None
    all_keys = objects.list(EXPORTS)
    assert sorted(exported_ids(objects.get_bytes, all_keys)) == list(range(1, 9))
    lines = objects.get_bytes(all_keys[0]).decode().splitlines()
    record = json.loads(lines[0])
    assert datetime.fromisoformat(record.pop("created_at")).date().isoformat() == day
    assert record == {
        "id": 1,
        "text": "r 0",
        "user_label": "positive",
        "model_prediction": "",
        "model_version": "",
        "prediction_id": "",
    }
    assert restarted.export_once() is None
    restarted.close()


def test_batches_and_day_partitions(
    feedback: FeedbackStore,
    objects: S3ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    days = iter(
        [datetime(2026, 11, 24, 23, 59, tzinfo=UTC)] * 4
        + [datetime(2026, 11, 25, 0, 1, tzinfo=UTC)] * 3
    )

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return next(days)

    monkeypatch.setattr(store_module, "datetime", Clock)
    submit(feedback, 7)
    monkeypatch.setattr(store_module, "datetime", datetime)
    exporter = exporter_for(feedback, objects, batch=3)
    done = exporter.export_pending()
    assert [d.key for d in done] == [
        f"{EXPORTS}date=2026-11-24/feedback-000000000001-000000000003.jsonl",
        f"{EXPORTS}date=2026-11-24/feedback-000000000004-000000000004.jsonl",
        f"{EXPORTS}date=2026-11-25/feedback-000000000005-000000000007.jsonl",
    ]
    assert objects.list(EXPORTS) == [d.key for d in done]
    exporter.close()


def test_an_existing_object_with_other_content_is_never_overwritten(
    feedback: FeedbackStore, objects: S3ObjectStore, tmp_path: Path
) -> None:
    submit(feedback, 2)
    day = datetime.now(UTC).date().isoformat()
    key = f"{EXPORTS}date={day}/feedback-000000000001-000000000002.jsonl"
    objects.put_bytes(key, b"someone else's\n")
    exporter = exporter_for(feedback, objects)
    with pytest.raises(ExportConflict, match="already exists with other content"):
        exporter.export_once()
    assert objects.get_bytes(key) == b"someone else's\n"
    assert exporter.state().exported_through == 0
    exporter.close()


def test_the_local_object_store_works_too(feedback: FeedbackStore, tmp_path: Path) -> None:
    objects = LocalObjectStore(tmp_path / "objects")
    submit(feedback, 4)
    exporter = exporter_for(feedback, objects, batch=3)
    assert exporter.location == str(tmp_path / "objects" / "feedback" / "exports") + "/"
    assert [(d.first_id, d.last_id) for d in exporter.export_pending()] == [(1, 3), (4, 4)]
    submit(feedback, 1, "next")
    assert [(d.first_id, d.last_id) for d in exporter.export_pending()] == [(5, 5)]
    keys = objects.list(EXPORTS)
    assert sorted(exported_ids(objects.get_bytes, keys)) == [1, 2, 3, 4, 5]
    exporter.close()


def test_the_background_task_exports_at_start_and_stops_promptly(
    feedback: FeedbackStore, tmp_path: Path
) -> None:
    objects = LocalObjectStore(tmp_path / "objects")
    submit(feedback, 3)
    config = ExportConfig(enabled=True, interval_seconds=60, batch_size=1000)
    exporter = FeedbackExporter(feedback, objects, config)

    async def run() -> float:
        exporter.start()
        for _ in range(100):
            if exporter.state().exported_through == 3:
                break
            await asyncio.sleep(0.05)
        started = time.monotonic()
        await exporter.stop()
        return time.monotonic() - started

    assert asyncio.run(run()) < 2
    assert len(objects.list(EXPORTS)) == 1


def export_config(store: str, environ: dict[str, str]) -> ExportConfig:
    return ExportConfig.from_settings(
        load_settings({"SENTILOOP_OBJECT_STORE": store, "SENTILOOP_S3_BUCKET": "b", **environ})
    )


def test_export_is_on_by_default_only_off_the_local_store() -> None:
    assert not export_config("local", {}).enabled
    assert export_config("s3", {}).enabled
    assert export_config("local", {"SENTILOOP_FEEDBACK_EXPORT": "on"}).enabled
    assert not export_config("s3", {"SENTILOOP_FEEDBACK_EXPORT": "off"}).enabled
    config = export_config("s3", {"SENTILOOP_FEEDBACK_EXPORT_SECONDS": "0.5"})
    assert config.interval_seconds == 0.5 and config.batch_size == 1000
    with pytest.raises(SystemExit, match="SENTILOOP_FEEDBACK_EXPORT='maybe'"):
        export_config("s3", {"SENTILOOP_FEEDBACK_EXPORT": "maybe"})


# -- the mesh ---------------------------------------------------------------------


@pytest.fixture
def s3_mesh(seaweed: SeaweedS3, bucket: str, tmp_path: Path) -> Iterator[tuple[RunningMesh, str]]:
    env = {
        **seaweed.sentiloop_env(bucket, prefix="sentiloop"),
        "SENTILOOP_FEEDBACK_EXPORT_SECONDS": "0.5",
        "SENTILOOP_S3_MAX_ATTEMPTS": "2",
        "SENTILOOP_S3_CONNECT_TIMEOUT": "1",
    }
    mesh = start_mesh(tmp_path / "mesh", extra_env=env)
    yield mesh, bucket
    assert mesh.stop() == 0


def test_feedback_is_exported_exactly_once_through_an_outage(
    seaweed: SeaweedS3, s3_mesh: tuple[RunningMesh, str]
) -> None:
    mesh, bucket = s3_mesh
    client = seaweed.client()
    prefix = f"sentiloop/{EXPORTS}"

    def ids_in_bucket() -> list[int]:
        keys = seaweed.keys(bucket, prefix)
        return exported_ids(
            lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(), keys
        )

    def send(http: httpx.Client, count: int, tag: str) -> list[int]:
        ids = []
        for i in range(count):
            response = http.post(
                "/feedback", json={"text": f"{tag} review {i}", "user_label": "negative"}
            )
            assert response.status_code == 200, response.text
            ids.append(int(response.json()["feedback"]["id"]))
        return ids

    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=30) as http:
        before = send(http, 10, "before")
        wait_for(lambda: sorted(ids_in_bucket()) == before, 30)

        seaweed.stop()
        during = send(http, 15, "during")  # acknowledged while S3 is down
        time.sleep(1.5)  # the exporter fails and backs off meanwhile
        assert http.get("/feedback/stats").json()["total"] == 25
        seaweed.start()
        after = send(http, 5, "after")

        everything = before + during + after
        wait_for(lambda: len(ids_in_bucket()) >= len(everything), 60)
        time.sleep(1.5)  # a few more export ticks: nothing may appear twice
        exported = ids_in_bucket()
    duplicates = [i for i, n in Counter(exported).items() if n > 1]
    assert not duplicates, duplicates
    assert sorted(exported) == sorted(everything)
    # Every object is one contiguous id range named after it.
    for key in seaweed.keys(bucket, prefix):
        first, last = (int(p) for p in key.rsplit("/", 1)[1][9:-6].split("-"))
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        ids = [json.loads(line)["id"] for line in body.splitlines()]
        assert ids == list(range(first, last + 1)), key
