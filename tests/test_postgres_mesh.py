"""The whole mesh on PostgreSQL (SENTILOOP_DATABASE_URL on the test server), with two
FeedbackService and two InferenceService processes behind Envoy: the loop runs end to
end with no SQLite file anywhere, and feedback sent by concurrent clients, each record
twice and through a replica killed mid-way, is stored once per acknowledged key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from postgres import PostgresServer
from test_feedback_loop import run_the_loop_once

from sentiloop.core.processes import pid_alive
from sentiloop.testing import (
    TINY_ENV,
    RunningMesh,
    free_port,
    give_feedback,
    replica_base_port,
    start_mesh,
    wait_for,
)
from sentiloop.v1 import retraining_pb2, retraining_pb2_grpc

# Each service's tables, in the schema named after it.
EXPECTED_TABLES = {
    "feedback": {"feedback", "audit_requests", "schema_migrations"},
    "inference": {"predictions", "shadow_predictions", "announced"},
    "registry": {"versions", "activations"},
    "model_init": {"jobs"},
    "retraining": {"runs"},
    "notification": {"events"},
    "evaluation": {"scores", "evaluations"},
}


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> str:
    return postgres.create_database()


@pytest.fixture(scope="module")
def pg_mesh(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[RunningMesh]:
    feedback_port, inference_port = replica_base_port(), replica_base_port()
    running = start_mesh(
        tmp_path_factory.mktemp("pg-mesh"),
        extra_env={
            **TINY_ENV,
            "SENTILOOP_DATABASE_URL": database,
            "SENTILOOP_FEEDBACK_REPLICAS": "2",
            "SENTILOOP_FEEDBACK_PORT": str(feedback_port),
            "SENTILOOP_INFERENCE_REPLICAS": "2",
            "SENTILOOP_INFERENCE_PORT": str(inference_port),
            "SENTILOOP_RESTART_DELAY_SECONDS": "0.2",
        },
    )
    yield running
    assert running.stop() == 0


@pytest.fixture
def client(pg_mesh: RunningMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=pg_mesh.url, headers=pg_mesh.operator_headers, timeout=600) as http:
        yield http


@pytest.fixture(scope="module")
def looped(pg_mesh: RunningMesh) -> dict[str, Any]:
    """The loop's first turn (bootstrap, feedback, a retraining run), once per module."""
    with httpx.Client(base_url=pg_mesh.url, headers=pg_mesh.operator_headers, timeout=600) as http:
        return run_the_loop_once(pg_mesh, http)


def test_the_loop_runs_on_postgresql_alone(
    looped: dict[str, Any],
    pg_mesh: RunningMesh,
    client: httpx.Client,
    postgres: PostgresServer,
    database: str,
) -> None:
    result = looped
    assert result["model_version"] == "v2" and result["feedback_samples"] == 30
    history = client.get("/evaluations", params={"model_version": "v1"})
    assert history.status_code == 200, history.text
    # Every store is in PostgreSQL, each service in its schema; not one SQLite file.
    assert sorted(str(p) for p in Path(pg_mesh.data_dir).rglob("*.db")) == []
    tables: dict[str, set[str]] = {}
    for schema, table in postgres.execute(
        database,
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    ):
        tables.setdefault(schema, set()).add(table)
    for schema, expected in EXPECTED_TABLES.items():
        assert expected <= tables.get(schema, set()), (schema, tables.get(schema))
    [(stored,)] = postgres.execute(database, "SELECT COUNT(*) FROM feedback.feedback")
    assert stored == client.get("/feedback/stats").json()["total"] >= 30
    [(versions,)] = postgres.execute(database, "SELECT COUNT(*) FROM registry.versions")
    assert versions >= 2  # v1 bootstrapped, v2 retrained (v3 when the test below ran first)


def test_each_acknowledged_key_is_stored_once_across_replicas(
    looped: dict[str, Any],  # first: the loop counts its own 30 labels
    pg_mesh: RunningMesh,
    client: httpx.Client,
    postgres: PostgresServer,
    database: str,
) -> None:
    """9 clients send 600 keyed records, each key twice (by two clients at about the same
    time), while the second feedback replica is killed and restarted; a client retries
    what failed with the same key, as the API asks. Every key ends up stored exactly
    once, and both answers for a key name the same record."""
    keys = [f"replica-test-{i}" for i in range(600)]
    answers: dict[str, list[int]] = {key: [] for key in keys}
    failures: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def send(key: str) -> None:
        payload = {"text": f"Replica test {key}", "user_label": "positive", "idempotency_key": key}
        for _attempt in range(20):
            try:
                response = client.post("/feedback", json=payload, timeout=30)
            except httpx.HTTPError as error:
                last = repr(error)
                continue
            if response.status_code == 200:
                with lock:
                    answers[key].append(int(response.json()["id"]))
                return
            last = f"{response.status_code} {response.text[:200]}"
            # A replica dying mid-call: 503/502 through Envoy; another try reaches one alive.
            if response.status_code not in (502, 503, 504):
                break
        with lock:
            failures.append(f"{key}: {last}")

    def kill_second_replica() -> None:
        wait_for(lambda: sum(len(a) for a in answers.values()) > 200, 60)
        os.kill(pg_mesh.pid("feedback-2"), signal.SIGKILL)
        killed.set()

    second = pg_mesh.pid("feedback-2")
    twice = [key for key in keys for _ in range(2)]
    with ThreadPoolExecutor(9) as pool:
        killer = pool.submit(kill_second_replica)
        list(pool.map(send, twice))
        killer.result()
    assert killed.is_set() and not pid_alive(second)
    assert failures == [], failures[:5]
    for key, ids in answers.items():
        assert len(ids) == 2 and ids[0] == ids[1], (key, ids)
    rows = postgres.execute(
        database,
        "SELECT idempotency_key, COUNT(*) FROM feedback.feedback"
        " WHERE idempotency_key LIKE 'replica-test-%' GROUP BY idempotency_key",
    )
    assert len(rows) == len(keys) and all(count == 1 for _, count in rows)
    # Both replicas took submissions (Envoy balanced over them), and the killed one came back.
    wait_for(lambda: (pid := pg_mesh.pid("feedback-2")) != second and pid_alive(pid), 30)
    logs = Path(pg_mesh.data_dir) / "logs"
    for name in ("feedback.log", "feedback-2.log"):
        assert "FeedbackService/SubmitFeedback OK" in (logs / name).read_text(), name


def test_two_retraining_processes_run_one_retraining_at_a_time(
    looped: dict[str, Any], pg_mesh: RunningMesh, client: httpx.Client
) -> None:
    """A second RetrainingService process on the same database (as a second ECS task
    would be): Retrain called on both at once starts one run; the other answers
    ALREADY_EXISTS (the database's unique index decides, not a process's memory)."""
    give_feedback(client, 12, "second run")
    port = free_port()
    second = subprocess.Popen(
        [sys.executable, "-m", "sentiloop.serve", "retraining"],
        env={**pg_mesh.env, "SENTILOOP_RETRAINING_PORT": str(port)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        addresses = [pg_mesh.address("retraining"), f"127.0.0.1:{port}"]
        wait_for(lambda: serving(addresses[1]), 60)
        barrier = threading.Barrier(2)

        def retrain(address: str) -> str:
            with pg_mesh.operator_channel(address) as channel:
                stub = retraining_pb2_grpc.RetrainingServiceStub(channel)
                barrier.wait()
                try:
                    answer = stub.Retrain(retraining_pb2.RetrainRequest(), timeout=600)
                except grpc.RpcError as error:
                    return f"{error.code().name}: {error.details()}"
                return f"OK {answer.model_version}"

        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(retrain, addresses))
        assert outcomes[0].startswith("ALREADY_EXISTS: a retraining run is already in progress")
        assert outcomes[1] == "OK v3", outcomes
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING
