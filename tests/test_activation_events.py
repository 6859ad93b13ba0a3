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

import grpc
import httpx
import pytest

from sentiloop.testing import (
    TINY_ENV,
    RunningMesh,
    start_mesh,
    wait_for,
    write_unloadable_artifact,
)
from sentiloop.v1 import registry_pb2, registry_pb2_grpc

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
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=60) as client:
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


def test_only_real_artifacts_get_a_version(mesh: RunningMesh) -> None:
    """The findings: /etc/passwd and ../../../../etc/passwd were registered. Now a 400
    through Envoy and INVALID_ARGUMENT over gRPC straight to the registry, naming why."""
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=60) as client:
        before = client.get("/models").json()["count"]
        for path in ("/etc/passwd", "../../../../etc/passwd"):
            answer = client.post("/models", json={"path": path, "source": "manual"})
            assert answer.status_code == 400, answer.text
            assert "is not in the object store" in answer.json()["error"], answer.text
        with mesh.operator_channel(mesh.address("registry")) as channel:
            stub = registry_pb2_grpc.ModelRegistryServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.RegisterModel(
                    registry_pb2.RegisterModelRequest(path="/etc/passwd", source="manual"),
                    timeout=10,
                )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client.get("/models").json()["count"] == before


def endpoint_status(client: httpx.Client, version: str) -> str:
    return str(client.get(f"/models/{version}").json()["model"].get("endpoint_status", ""))


def test_the_registry_answers_endpoint_status_from_serving_events(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=60) as client:
        good = ensure_serving(client)
        wait_for(lambda: endpoint_status(client, good) == "InService", 15)
        # How it serves, as InferenceService announced it: the ONNX graph train.py exported
        # and checked, at the precision that passed (int8 only when proven).
        status = client.get("/predict/status").json()
        assert status["engine"] == "onnxruntime" and status["precision"] in ("fp32", "int8")
        model = client.get(f"/models/{good}").json()["model"]
        assert (model["engine"], model["precision"]) == (status["engine"], status["precision"])

        # A version whose artifact passes the registry's checks but cannot load. The
        # finding: the registry claimed it while the previous version answered, and the
        # statuses stayed Failed after a rollback. Now the registry goes back to the
        # version that answers, says why, and every status agrees.
        registered = client.post(
            "/models", json={"path": str(write_unloadable_artifact(mesh.data_dir))}
        )
        assert registered.status_code == 200, registered.text
        broken = registered.json()["model"]["version"]
        activated = client.post(f"/models/{broken}/activate", json={"reason": "try it"})
        assert activated.status_code == 200, activated.text
        wait_for(lambda: client.get("/models/active").json()["model"]["version"] == good, 30)
        wait_for(lambda: serving(client) == good, 15)
        wait_for(lambda: endpoint_status(client, good) == "InService", 15)
        endpoint = client.get("/model-init/endpoint-status").json()
        assert (endpoint["status"], endpoint["model_version"]) == ("InService", good), endpoint
        assert client.post("/predict", json={"text": "ok"}).json()["model_version"] == good
        assert endpoint_status(client, broken) == ""  # only the active version has one
        failed = client.get("/events", params={"type_prefix": "model.activation_failed"})
        assert any(
            e["subject"] == broken and e["attributes"]["active_version"] == good
            for e in failed.json()["events"]
        ), failed.text
        history = client.get("/models/activations").json()["activations"]
        assert [(a["version"], a["kind"]) for a in history[:2]] == [
            (good, "reverted"),
            (broken, "activate"),
        ]
        assert broken in history[0]["reason"] and "failed to load" in history[0]["reason"]

        # With ModelInit frozen, the registry still answers at once: it asks no one.
        os.kill(mesh.pid("model_init"), signal.SIGSTOP)
        try:
            with httpx.Client(base_url=mesh.url, timeout=3) as quick:
                assert endpoint_status(quick, good) == "InService"
                models = quick.get("/models").json()["models"]
                assert [m["endpoint_status"] for m in models if m["is_active"]] == ["InService"]
        finally:
            os.kill(mesh.pid("model_init"), signal.SIGCONT)


def scored(mesh: RunningMesh, version: str) -> list[int]:
    """EvaluationService's "scored" log records of ``version``: texts predicted each time."""
    records = [
        json.loads(line)
        for line in (mesh.data_dir / "logs" / "evaluation.log").read_text().splitlines()
        if line.startswith("{") and '"msg": "scored ' in line
    ]
    return [r["predicted_now"] for r in records if r.get("version") == version]


def test_an_activated_version_is_scored_before_anyone_evaluates_it(mesh: RunningMesh) -> None:
    with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=120) as client:
        version = ensure_serving(client)
        # The model.activated event had EvaluationService predict the test set at once ...
        prepared = wait_for(lambda: scored(mesh, version), 60)
        assert prepared[0] > 0
        # ... so that Evaluate answers from kept scores, predicting nothing.
        report = client.post("/evaluate", json={"model_version": version})
        assert report.status_code == 200, report.text
        assert report.json()["test_metrics"]["total_samples"] > 0
        assert scored(mesh, version)[-1] == 0
