"""The model lifecycle end to end on the real mesh (tiny preset): bootstrap, the
training-status stream, deployment, the registry, predictions, rollback."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from sentiloop.testing import TINY_ENV, RunningMesh, start_mesh, wait_for
from sentiloop.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    model_init_pb2,
    model_init_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

LABELS = {"positive", "negative", "neutral"}


@pytest.fixture
def lifecycle(tmp_path: Path) -> Iterator[RunningMesh]:
    """A fresh mesh for each test (it starts in seconds): each test owns the state it
    builds, so that the tests pass in any order."""
    running = start_mesh(tmp_path, extra_env=TINY_ENV)
    try:
        yield running
    finally:
        assert running.stop() == 0


@pytest.fixture
def client(lifecycle: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=lifecycle.url, headers=lifecycle.operator_headers, timeout=60
    ) as http:
        yield http


def watch_json(client: httpx.Client, job_name: str) -> list[dict[str, object]]:
    """The NDJSON status stream through Envoy, read to its end."""
    with client.stream("GET", f"/model-init/watch/{job_name}", timeout=300) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def endpoint(client: httpx.Client) -> dict[str, str]:
    return client.get("/model-init/endpoint-status").json()  # type: ignore[no-any-return]


def test_predict_before_any_model_is_unavailable(
    lifecycle: RunningMesh, client: httpx.Client
) -> None:
    response = client.post("/predict", json={"text": "I love it"})
    assert response.status_code == 503
    assert "no model is deployed" in response.json()["message"]
    with (
        lifecycle.operator_channel(lifecycle.address("inference")) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        inference_pb2_grpc.InferenceServiceStub(channel).Predict(
            inference_pb2.PredictRequest(text="I love it"), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert endpoint(client)["status"] == "NotDeployed"


def test_bootstrap_deploy_switch_and_rollback(lifecycle: RunningMesh, client: httpx.Client) -> None:
    started = client.post("/model-init/bootstrap?auto_deploy=true", json={"preset": "tiny"})
    assert started.status_code == 200, started.text
    first_job = started.json()["job_name"]
    assert started.json()["status"] == "InProgress"

    # Two watchers at once, both get the whole story.
    streams: list[list[dict[str, object]]] = []
    other = threading.Thread(target=lambda: streams.append(watch_json(client, first_job)))
    other.start()
    updates = watch_json(client, first_job)
    other.join(timeout=300)
    for stream in (updates, streams[0]):
        assert stream[-1]["done"] is True
        assert all(u["done"] is False for u in stream[:-1])
        job = stream[-1]["job"]
        assert job["status"] == "Completed"  # type: ignore[index]
        assert job["model_artifacts"].endswith("model.tar.gz")  # type: ignore[index]
        steps = [u["job"]["progress"]["step"] for u in stream]  # type: ignore[index]
        assert steps == sorted(steps) and steps[-1] == job["progress"]["total_steps"] > 0  # type: ignore[index]
        assert stream[-1]["test_metrics"]["total_samples"] > 0  # type: ignore[index]
    assert {"Training", "Evaluating"} <= {u["job"]["secondary_status"] for u in updates}  # type: ignore[index]

    # A watcher that joins late gets the final state at once.
    late = watch_json(client, first_job)
    assert len(late) == 1 and late[0]["done"] is True

    # auto_deploy: the endpoint serves it as v1.
    wait_for(lambda: endpoint(client)["status"] == "InService", timeout=120)
    assert endpoint(client)["model_version"] == "v1"
    # The registry learns it from InferenceService's serving.changed event.
    wait_for(
        lambda: client.get("/models/v1").json()["model"].get("endpoint_status") == "InService", 10
    )
    models = client.get("/models").json()
    assert models["count"] == 1
    [v1] = models["models"]
    assert v1["version"] == "v1" and v1["is_active"] is True and v1["source"] == "bootstrap"
    assert v1["endpoint_status"] == "InService" and v1["training_job_name"] == first_job
    assert 0 <= v1["accuracy"] <= 1 and v1["path"].endswith("model.tar.gz")
    assert len(v1["test_metrics"]["confusion_matrix"]) == 3

    prediction = client.post("/predict", json={"text": "I love this product!"}).json()
    assert prediction["model_version"] == "v1"
    assert prediction["label"] in LABELS and prediction["prediction_id"]
    assert abs(sum(prediction["scores"].values()) - 1) < 1e-4
    assert prediction["confidence"] == max(prediction["scores"].values())
    with sqlite3.connect(lifecycle.data_dir / "inference" / "predictions.db") as db:
        logged = db.execute(
            "SELECT text, model_version, label FROM predictions WHERE id = ?",
            (prediction["prediction_id"],),
        ).fetchone()
    assert logged == ("I love this product!", "v1", prediction["label"])

    # A second job over gRPC, deployed by hand while a client predicts in a loop.
    with lifecycle.operator_channel() as channel:
        stub = model_init_pb2_grpc.ModelInitServiceStub(channel)
        second = stub.Bootstrap(model_init_pb2.BootstrapRequest(preset="tiny"), timeout=30)
        last = list(
            stub.WatchTrainingJob(
                model_init_pb2.WatchTrainingJobRequest(job_name=second.job_name), timeout=300
            )
        )[-1]
        assert last.done and last.job.status == "Completed"

    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def predict_in_a_loop() -> None:
        with httpx.Client(
            base_url=lifecycle.url, headers=lifecycle.operator_headers, timeout=30
        ) as http:
            while not stop.is_set():
                response = http.post("/predict", json={"text": "Works fine, nothing special."})
                if response.status_code == 200:
                    seen.append(response.json()["model_version"])
                else:
                    failures.append(f"{response.status_code} {response.text}")

    loop = threading.Thread(target=predict_in_a_loop)
    loop.start()
    try:
        wait_for(lambda: len(seen) >= 5, timeout=30)
        deployed = client.post(f"/model-init/deploy/{second.job_name}", json={})
        assert deployed.status_code == 200, deployed.text
        assert deployed.json()["model_version"] == "v2"
        assert deployed.json()["endpoint_status"] == "InService"
        count = len(seen)
        wait_for(lambda: len(seen) > count + 5, timeout=30)
    finally:
        stop.set()
        loop.join(timeout=60)
    assert failures == []
    assert seen[0] == "v1" and seen[-1] == "v2"
    assert seen.index("v2") == len(seen) - seen[::-1].index("v1")  # one switch, no flapping

    rolled = client.post("/models/rollback", json={"reason": "test"})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["model"]["version"] == "v1"
    assert rolled.json()["rolled_back_version"] == "v2"
    wait_for(
        lambda: client.post("/predict", json={"text": "ok"}).json()["model_version"] == "v1",
        timeout=30,
    )
    kinds = [a["kind"] for a in client.get("/models/activations").json()["activations"]]
    assert kinds == ["rollback", "activate", "activate"]
    # Nothing further back than v1: a second rollback is refused, and nothing changes.
    again = client.post("/models/rollback", json={})
    assert again.status_code == 400
    assert client.get("/models/active").json()["model"]["version"] == "v1"


def test_unknown_and_malicious_job_names(lifecycle: RunningMesh, client: httpx.Client) -> None:
    jobs_dir = lifecycle.data_dir / "model_init" / "jobs"
    before = sorted(p.name for p in jobs_dir.iterdir()) if jobs_dir.exists() else []
    assert client.get("/model-init/status/no-such-job").status_code == 404
    assert client.post("/model-init/deploy/no-such-job", json={}).status_code == 404
    assert client.get("/model-init/status/..%2Fx").status_code == 400
    assert client.get("/model-init/status/a/b").status_code == 404  # no route at all
    assert client.get(f"/model-init/status/{'x' * 300}").status_code == 400
    with lifecycle.operator_channel(lifecycle.address("model_init")) as channel:
        stub = model_init_pb2_grpc.ModelInitServiceStub(channel)
        for name, code in [
            ("no-such-job", grpc.StatusCode.NOT_FOUND),
            ("../x", grpc.StatusCode.INVALID_ARGUMENT),
            ("a/b", grpc.StatusCode.INVALID_ARGUMENT),
            ("x" * 300, grpc.StatusCode.INVALID_ARGUMENT),
            ("", grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                stub.GetTrainingStatus(model_init_pb2.GetTrainingStatusRequest(job_name=name))
            assert raised.value.code() == code, name
            with pytest.raises(grpc.RpcError) as raised:
                list(stub.WatchTrainingJob(model_init_pb2.WatchTrainingJobRequest(job_name=name)))
            assert raised.value.code() == code, name
    after = sorted(p.name for p in jobs_dir.iterdir()) if jobs_dir.exists() else []
    assert after == before
    assert not (lifecycle.data_dir / "x").exists()


def train_pids(job_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (
                os.readlink(proc / "cwd") == str(job_dir)
                and b"train.py" in (proc / "cmdline").read_bytes()
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_killing_the_training_process_fails_the_job(
    lifecycle: RunningMesh, client: httpx.Client
) -> None:
    job = client.post("/model-init/bootstrap", json={"preset": "tiny"}).json()["job_name"]
    job_dir = lifecycle.data_dir / "model_init" / "jobs" / job
    [pid] = wait_for(lambda: train_pids(job_dir), timeout=60, interval=0.02)
    os.kill(pid, signal.SIGKILL)
    final = watch_json(client, job)[-1]["job"]
    assert final["status"] == "Failed"  # type: ignore[index]
    assert "killed by SIGKILL" in final["failure_reason"]  # type: ignore[index]
    assert final["end_time"]  # type: ignore[index]


def test_restarting_model_init_mid_training_keeps_the_job_and_its_auto_deploy(
    lifecycle: RunningMesh, client: httpx.Client
) -> None:
    versions_before = client.get("/models").json()["count"]
    job = client.post("/model-init/bootstrap?auto_deploy=true", json={"preset": "tiny"}).json()[
        "job_name"
    ]
    job_dir = lifecycle.data_dir / "model_init" / "jobs" / job
    [pid] = wait_for(lambda: train_pids(job_dir), timeout=60, interval=0.02)
    os.kill(lifecycle.pid("model_init"), signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=30)  # training ended with it
    lifecycle.wait_for_health(200, timeout=60)
    status = wait_for(
        lambda: (
            (s := client.get(f"/model-init/status/{job}")).status_code == 200
            and s.json()["job"]["status"] != "InProgress"
            and s.json()["job"]
        ),
        timeout=300,
    )
    assert status["status"] == "Completed"
    models = wait_for(
        lambda: (m := client.get("/models").json())["count"] > versions_before and m, timeout=120
    )
    newest = models["models"][0]
    assert newest["training_job_name"] == job
    wait_for(lambda: endpoint(client)["model_version"] == newest["version"], timeout=120)
    assert (
        newest["is_active"]
        or client.get("/models/active").json()["model"]["version"] == newest["version"]
    )


def test_registry_over_grpc(lifecycle: RunningMesh) -> None:
    with lifecycle.operator_channel(lifecycle.address("registry")) as channel:
        stub = registry_pb2_grpc.ModelRegistryServiceStub(channel)
        listed = stub.ListModels(registry_pb2.ListModelsRequest())
        assert listed.count == len(listed.models) == 0  # a fresh mesh
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetModel(registry_pb2.GetModelRequest(version="v999"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as raised:
            stub.ActivateModel(registry_pb2.ActivateModelRequest(version="../etc"))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_restarted_mesh_serves_its_model_from_the_first_request(tmp_path: Path) -> None:
    """The services start together, so InferenceService may come up before the registry
    answers: it waits for the registry before it reports SERVING, so that `up` is not
    ready while the active model is still unknown."""
    mesh = start_mesh(tmp_path, extra_env=TINY_ENV)
    try:
        with httpx.Client(base_url=mesh.url, headers=mesh.operator_headers, timeout=120) as client:
            client.post("/model-init/bootstrap?auto_deploy=true", json={})
            wait_for(lambda: endpoint(client)["status"] == "InService", 180)
    finally:
        assert mesh.stop() == 0
    for _ in range(2):
        mesh = start_mesh(tmp_path, extra_env=TINY_ENV)
        try:  # a failed assertion must not leave a mesh holding its ports
            with httpx.Client(
                base_url=mesh.url, headers=mesh.operator_headers, timeout=60
            ) as client:
                first = client.post("/predict", json={"text": "Works as promised"})
        finally:
            assert mesh.stop() == 0
        assert first.status_code == 200, first.text
        assert first.json()["model_version"] == "v1"
