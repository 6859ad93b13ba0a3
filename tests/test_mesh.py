"""The mesh as a whole: start-up, aggregated health, failure and restart, shutdown."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import httpx

from sentiloop.core.config import SERVICES
from sentiloop.core.processes import pid_alive
from sentiloop.testing import RunningMesh, start_mesh
from sentiloop.v1 import health_pb2, health_pb2_grpc


def test_health_lists_every_service(mesh: RunningMesh, http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["services"] == {name: "SERVING" for name in SERVICES}


def test_health_over_grpc_through_envoy(mesh: RunningMesh, channel_to) -> None:  # type: ignore[no-untyped-def]
    stub = health_pb2_grpc.MeshHealthServiceStub(channel_to("envoy"))
    answer = stub.GetMeshHealth(health_pb2.GetMeshHealthRequest(), timeout=5)
    assert answer.status == "ok"
    assert set(answer.services) == set(SERVICES)


def test_standard_grpc_health_on_each_service(mesh: RunningMesh, channel_to) -> None:  # type: ignore[no-untyped-def]
    from grpc_health.v1 import health_pb2 as std
    from grpc_health.v1 import health_pb2_grpc as std_grpc

    for name, (_, full_name) in SERVICES.items():
        stub = std_grpc.HealthStub(channel_to(name))
        answer = stub.Check(std.HealthCheckRequest(service=full_name), timeout=5)
        assert answer.status == std.HealthCheckResponse.SERVING, name


def test_a_dead_service_makes_health_503_then_recovers(
    mesh: RunningMesh, http: httpx.Client
) -> None:
    os.kill(mesh.pid("evaluation"), signal.SIGKILL)
    started = time.monotonic()
    body = mesh.wait_for_health(503, timeout=5)
    took = time.monotonic() - started
    assert body["status"] == "degraded"
    assert body["services"]["evaluation"] == "UNREACHABLE"  # type: ignore[index]
    assert took < 5
    # The supervisor restarts it; the mesh is whole again.
    mesh.wait_for_health(200, timeout=30)


def test_request_ids_reach_the_service_logs(mesh: RunningMesh, http: httpx.Client) -> None:
    response = http.get("/feedback/stats")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert request_id
    log = mesh.data_dir / "logs" / "feedback.log"
    deadline = time.monotonic() + 5
    while request_id not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in log.read_text().splitlines() if request_id in x)
    assert '"rpc": "/sentiloop.v1.FeedbackService/GetFeedbackStats"' in line


def test_cors_is_same_origin_by_default(http: httpx.Client) -> None:
    """A page from another origin gets no CORS grant: the browser neither sends its
    preflighted calls (an operator call carries an Authorization header) nor lets it read
    answers. tests/test_auth.py shows a configured origin allowed."""
    preflight = http.options(
        "/models/rollback",
        headers={
            "Origin": "http://elsewhere.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    response = http.get("/feedback/stats", headers={"Origin": "http://elsewhere.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_sigterm_stops_everything_cleanly(tmp_path: Path) -> None:
    running = start_mesh(tmp_path)
    children = running.child_pids()
    assert set(children) == {*SERVICES, "envoy"}
    assert running.stop(timeout=30) == 0
    assert [name for name, pid in children.items() if pid_alive(pid)] == []


def test_unknown_grpc_service_through_envoy_is_unimplemented(mesh: RunningMesh, channel_to) -> None:  # type: ignore[no-untyped-def]
    call = channel_to("envoy").unary_unary("/sentiloop.v1.NoSuchService/Nothing")
    try:
        call(b"", timeout=5)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    else:
        raise AssertionError("an unknown service answered")
