"""InferenceService replicas behind Envoy: `kill -9` of one while clients predict fails
no call (Envoy retries Predict, which changes nothing, on the other), and the supervisor
starts it again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from sentiloop.core.config import REPLICA_PORT_STRIDE
from sentiloop.core.processes import pid_alive
from sentiloop.testing import (
    TINY_ENV,
    PredictLoad,
    RunningMesh,
    replica_base_port,
    start_mesh,
    wait_for,
)
from sentiloop.v1 import inference_pb2, inference_pb2_grpc


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    base = replica_base_port()
    running = start_mesh(
        tmp_path_factory.mktemp("replicas"),
        extra_env={
            **TINY_ENV,
            "SENTILOOP_INFERENCE_REPLICAS": "2",
            "SENTILOOP_INFERENCE_PORT": str(base),
            "SENTILOOP_RESTART_DELAY_SECONDS": "0.2",
        },
    )
    running.replica_ports = [base, base + REPLICA_PORT_STRIDE]  # type: ignore[attr-defined]
    try:
        with httpx.Client(
            base_url=running.url, headers=running.operator_headers, timeout=120
        ) as client:
            started = client.post("/model-init/bootstrap?auto_deploy=true", json={})
            assert started.status_code == 200, started.text
        for port in running.replica_ports:  # type: ignore[attr-defined]
            wait_for(lambda p=port: serving(p), 180)  # type: ignore[misc]
        yield running
    finally:
        assert running.stop() == 0


def serving(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = inference_pb2_grpc.InferenceServiceStub(channel).GetServingStatus(
                inference_pb2.GetServingStatusRequest(), timeout=2
            )
        except grpc.RpcError:
            return ""
    return status.model_version if status.status == "InService" else ""


def test_killing_a_replica_under_load_fails_no_call(mesh: RunningMesh) -> None:
    with PredictLoad(mesh.envoy_address, clients=4) as load:
        wait_for(lambda: len(load.versions) > 50, 60)
        second = mesh.pid("inference-2")
        os.kill(second, signal.SIGKILL)
        killed_at, before = time.monotonic(), len(load.versions)
        wait_for(lambda: not pid_alive(second), 10)
        # Calls go on on the first replica while the second is down and reloading.
        wait_for(lambda: len(load.versions) > before + 100 and time.monotonic() > killed_at + 3, 60)
        restarted = wait_for(
            lambda: (pid := mesh.pid("inference-2")) != second and pid_alive(pid) and pid, 30
        )
        wait_for(lambda: serving(mesh.replica_ports[1]), 60)  # type: ignore[attr-defined]
    assert load.failures == [], load.failures[:5]
    assert restarted != second
    # Both replicas took calls before the kill: Envoy balanced over them.
    logs = Path(mesh.data_dir) / "logs"
    for name in ("inference.log", "inference-2.log"):
        assert "InferenceService/Predict OK" in (logs / name).read_text(), name


def test_services_reach_every_replica_of_another() -> None:
    """A service calls another's replicas round-robin (gRPC skips one that is down); a
    host name, as in a deployment, is left to whatever balances behind it."""
    from sentiloop.core.clients import _target
    from sentiloop.core.config import load_settings

    settings = load_settings(
        {"SENTILOOP_FEEDBACK_REPLICAS": "2", "SENTILOOP_FEEDBACK_PORT": "8001"}
    )
    target, options = _target(settings.process_addresses("feedback"))
    assert target == "ipv4:127.0.0.1:8001,127.0.0.1:9001"
    assert options == [("grpc.lb_policy_name", "round_robin")]
    assert _target(["feedback.internal:8001", "feedback.internal:9001"]) == (
        "feedback.internal:8001",
        [],
    )
    assert _target(["127.0.0.1:8001"]) == ("127.0.0.1:8001", [])
