"""`sentiloop db copy`: a mesh that ran on SQLite, its metadata copied into PostgreSQL,
and a mesh started on that database (a new data directory, the same objects) serving
what the first one had: models and the active version, feedback, events, predictions
that feedback can still cite, and ids that go on after the copied ones."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from postgres import PostgresServer
from test_feedback_loop import bootstrap

from sentiloop.testing import TINY_ENV, give_feedback, start_mesh, wait_for


def db_copy(data_dir: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SENTILOOP_DATABASE_URL"}
    if url is not None:
        env["SENTILOOP_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "sentiloop.cli", "db", "copy", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def digests(data_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(data_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(data_dir.rglob("*.db"))
    }


def state(client: httpx.Client) -> dict[str, Any]:
    """What the mesh says it holds, through Envoy."""
    models = client.get("/models").json()["models"]
    return {
        "models": [(m["version"], m.get("is_active", False), m["path"]) for m in models],
        "activations": client.get("/models/activations").json(),
        "feedback": client.get("/feedback", params={"page_size": 100}).json()["feedback"],
        "events": [
            (e["id"], e["type"], e["subject"])
            for e in client.get("/events", params={"page_size": 200}).json()["events"]
        ],
        "evaluations": client.get("/evaluations").json(),
        "jobs": client.get("/model-init/jobs").json(),
    }


def test_a_sqlite_mesh_moves_to_postgresql(tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.create_database()
    old_dir = tmp_path / "sqlite"
    mesh = start_mesh(old_dir, extra_env=TINY_ENV)
    try:
        with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=600) as client:
            bootstrap(client)
            given = give_feedback(client, 10, "before")
            retrained = client.post("/retrain", json={})
            assert retrained.status_code == 200, retrained.text
            assert client.post("/evaluate", json={}).status_code == 200
            uncited = client.post("/predict", json={"text": "not answered yet"}).json()
            before = state(client)
            active = next(version for version, is_active, _ in before["models"] if is_active)
    finally:
        assert mesh.stop() == 0
    assert len(before["models"]) == 2 and len(before["feedback"]) == 10
    files = digests(old_dir)
    assert {"registry/registry.db", "feedback/feedback.db", "inference/predictions.db"} <= set(
        files
    )

    # Refused without a target, and (below) while the mesh runs: nothing written.
    assert db_copy(old_dir, None).returncode == 2

    copied = db_copy(old_dir, url)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert "registry/registry.db: versions: 2 rows" in copied.stdout
    for line in (
        "feedback/feedback.db: feedback: 10 rows",
        "inference/predictions.db: predictions: 11 rows",
        "model_init/jobs.db: jobs: 2 rows",
        "retraining/runs.db: runs: 1 rows",
        "evaluation/evaluations.db: evaluations: 1 rows",
        f"notification/events.db: events: {len(before['events'])} rows",
    ):
        assert line in copied.stdout, copied.stdout
    assert "done:" in copied.stdout and "objects" in copied.stdout
    # Every SQLite file the mesh wrote is copied: a store added later cannot be forgotten
    # in the command's list (cli._metadata_files).
    for path in files:
        assert f"{path}: " in copied.stdout, (path, copied.stdout)
    assert digests(old_dir) == files  # the SQLite files are read, never written

    counted = (
        "SELECT (SELECT COUNT(*) FROM feedback.feedback), (SELECT COUNT(*) FROM registry.versions)"
    )
    rows = postgres.execute(url, counted)
    again = db_copy(old_dir, url)
    assert again.returncode == 2 and "already holds rows" in again.stderr, again.stderr
    assert postgres.execute(url, counted) == rows == [(10, 2)]

    # A new data directory; the local object store's paths are recorded absolute, so the
    # objects must be found where they were: here, through a link.
    new_dir = tmp_path / "postgresql"
    new_dir.mkdir()
    (new_dir / "objects").symlink_to(old_dir / "objects")
    mesh = start_mesh(new_dir, extra_env={**TINY_ENV, "SENTILOOP_DATABASE_URL": url})
    try:
        refused = db_copy(new_dir, postgres.create_database())
        assert refused.returncode == 2 and "running" in refused.stderr, refused.stderr
        with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=600) as client:
            after = state(client)
            assert after["models"] == before["models"]
            assert after["activations"] == before["activations"]
            assert after["feedback"] == before["feedback"]
            assert after["evaluations"] == before["evaluations"]
            assert after["jobs"] == before["jobs"]
            # The new mesh may have announced what it serves since: the old events come first.
            assert after["events"][-len(before["events"]) :] == before["events"]

            served = wait_for(
                lambda: (
                    (r := client.post("/predict", json={"text": "great"})).status_code == 200
                    and r.json()
                ),
                60,
            )
            assert served["model_version"] == active

            cited = client.get(f"/predictions/{uncited['prediction_id']}")
            assert cited.status_code == 200, cited.text
            kept = cited.json()["prediction"]
            for field in ("prediction_id", "text", "label", "model_version", "scores"):
                assert kept[field] == uncited[field], field
            answer = client.post(
                "/feedback",
                json={"prediction_id": uncited["prediction_id"], "user_label": "neutral"},
            )
            assert answer.status_code == 200, answer.text
            record = answer.json()["feedback"]
            assert record["text"] == "not answered yet"
            assert int(record["id"]) == max(int(r["id"]) for r in given) + 1
            # What the new mesh announced since takes ids after the copied events'.
            now = state(client)["events"]
            newest = max(int(event_id) for event_id, _, _ in before["events"])
            assert all(int(e[0]) > newest for e in now[: len(now) - len(before["events"])])
    finally:
        assert mesh.stop() == 0
    assert list(new_dir.rglob("*.db")) == []
