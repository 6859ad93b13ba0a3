"""InferenceService follows activations as events (model.activated), not by polling: with
the fallback poll set to ten minutes, every activation and rollback is served within
seconds, also after NotificationService was killed and restarted (the stream resumes).
The registry, in turn, answers endpoint statuses from the serving.changed events that
InferenceService announces, not by asking ModelInit (which asked InferenceService)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from functools import partial

import httpx
import pytest

from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh, wait_for

NO_POLLING = {**TINY_ENV, "SENTILOOP_INFERENCE_FALLBACK_POLL_SECONDS": "600"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("activation"), extra_env=NO_POLLING)
    try:
        yield running
    finally:
        assert running.stop() == 0


def serving(client: httpx.Client) -> str:
    status = client.get("/predict/status").json()
    return str(status.get("model_version", "")) if status.get("status") == "InService" else ""


def newly_served(client: httpx.Client, before: str) -> str:
    now = serving(client)
    return now if now not in ("", before) else ""


def test_activations_and_rollbacks_are_followed_as_events(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=60) as client:
        served = []
        for _ in range(2):
            before = serving(client)
            started = client.post("/model-init/bootstrap?auto_deploy=true", json={})
            assert started.status_code == 200, started.text
            served.append(wait_for(partial(newly_served, client, before), 120))
        first, second = served

        rolled = client.post("/models/rollback", json={"reason": "events test"})
        assert rolled.status_code == 200, rolled.text
        wait_for(lambda: serving(client) == first, 15)

        # NotificationService dies and comes back (the supervisor restarts it); the
        # follower subscribes again and the next activation is still served.
        os.kill(mesh.pid("notification"), signal.SIGKILL)
        wait_for(lambda: client.get("/events").status_code == 200, 60)
        activated = client.post(f"/models/{second}/activate", json={"reason": "after the restart"})
        assert activated.status_code == 200, activated.text
        wait_for(lambda: serving(client) == second, 30)

        events = client.get("/events", params={"type_prefix": "model.activated"}).json()["events"]
        kinds = [(e["subject"], e["attributes"]["kind"]) for e in events]
        assert (first, "rollback") in kinds and (second, "activate") in kinds, kinds


def ensure_serving(client: httpx.Client) -> str:
    """The served version, after bootstrapping one when nothing serves yet."""
    if not serving(client):
        started = client.post("/model-init/bootstrap?auto_deploy=true", json={})
        assert started.status_code == 200, started.text
        wait_for(lambda: serving(client) != "", 120)
    return serving(client)


def endpoint_status(client: httpx.Client, version: str) -> str:
    return str(client.get(f"/models/{version}").json()["model"].get("endpoint_status", ""))


def test_the_registry_answers_endpoint_status_from_serving_events(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=60) as client:
        good = ensure_serving(client)
        wait_for(lambda: endpoint_status(client, good) == "InService", 15)
        # How it serves, as InferenceService announced it: the ONNX graph train.py exported
        # and checked, at the precision that passed (int8 only when proven).
        status = client.get("/predict/status").json()
        assert status["engine"] == "onnxruntime" and status["precision"] in ("fp32", "int8")
        model = client.get(f"/models/{good}").json()["model"]
        assert (model["engine"], model["precision"]) == (status["engine"], status["precision"])

        # A version whose artifact cannot load: the registry learns that it failed.
        registered = client.post("/models", json={"path": "/nowhere/model.tar.gz"})
        assert registered.status_code == 200, registered.text
        broken = registered.json()["model"]["version"]
        assert client.post(f"/models/{broken}/activate", json={}).status_code == 200
        wait_for(lambda: endpoint_status(client, broken) == "Failed", 30)
        assert (
            serving(client) == ""
            and client.post("/predict", json={"text": "ok"}).json()["model_version"] == good
        )  # the failed load did not stop the good version from answering

        # With ModelInit frozen, the registry still answers at once: it asks no one.
        os.kill(mesh.pid("model_init"), signal.SIGSTOP)
        try:
            with httpx.Client(base_url=mesh.url, timeout=3) as quick:
                assert endpoint_status(quick, broken) == "Failed"
                models = quick.get("/models").json()["models"]
                assert [m["endpoint_status"] for m in models if m["is_active"]] == ["Failed"]
        finally:
            os.kill(mesh.pid("model_init"), signal.SIGCONT)

        # Rolling back to the served version ends the failure, in the registry too.
        rolled = client.post("/models/rollback", json={"reason": "the artifact is broken"})
        assert rolled.status_code == 200 and rolled.json()["model"]["version"] == good
        wait_for(lambda: serving(client) == good, 15)
        wait_for(lambda: endpoint_status(client, good) == "InService", 15)
        assert endpoint_status(client, broken) == ""  # only the active version has one


def scored(mesh: RunningMesh, version: str) -> list[int]:
    """EvaluationService's "scored" log records of ``version``: texts predicted each time."""
    records = [
        json.loads(line)
        for line in (mesh.data_dir / "logs" / "evaluation.log").read_text().splitlines()
        if line.startswith("{") and '"msg": "scored ' in line
    ]
    return [r["predicted_now"] for r in records if r.get("version") == version]


def test_an_activated_version_is_scored_before_anyone_evaluates_it(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=120) as client:
        version = ensure_serving(client)
        # The model.activated event had EvaluationService predict the test set at once ...
        prepared = wait_for(lambda: scored(mesh, version), 60)
        assert prepared[0] > 0
        # ... so that Evaluate answers from kept scores, predicting nothing.
        report = client.post("/evaluate", json={"model_version": version})
        assert report.status_code == 200, report.text
        assert report.json()["test_metrics"]["total_samples"] > 0
        assert scored(mesh, version)[-1] == 0
