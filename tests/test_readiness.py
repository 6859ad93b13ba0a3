"""NOT_SERVING until ready, observed: InferenceService started while the registry is down
reports NOT_SERVING (it does not know which model to serve yet), and SERVING once the
registry is up and has answered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sentiloop.core.config import SERVICES, env_name
from sentiloop.testing import free_port


def health(address: str) -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return None  # not listening yet
    return int(answer.status)


def test_inference_is_not_serving_until_the_registry_answers(tmp_path: Path) -> None:
    env = {**os.environ, "SENTILOOP_DATA_DIR": str(tmp_path), "SENTILOOP_HOST": "127.0.0.1"}
    for name in SERVICES:  # nothing of a developer's own mesh may answer
        env[env_name(name, "PORT")] = str(free_port())
        env.pop(env_name(name, "ADDR"), None)
    inference = f"127.0.0.1:{env['SENTILOOP_INFERENCE_PORT']}"
    processes = []

    def start(service: str) -> None:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "sentiloop.serve", service],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    try:
        start("inference")
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len([s for s in seen if s is not None]) < 10:
            seen.append(health(inference))
            time.sleep(0.2)
        answered = [s for s in seen if s is not None]
        assert answered, "InferenceService never answered its health check"
        assert set(answered) == {health_pb2.HealthCheckResponse.NOT_SERVING}, seen

        start("registry")
        deadline = time.monotonic() + 40
        while health(inference) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "still NOT_SERVING with the registry up"
            time.sleep(0.2)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_a_second_process_on_a_taken_port_fails_instead_of_sharing_it(tmp_path: Path) -> None:
    env = {**os.environ, "SENTILOOP_DATA_DIR": str(tmp_path), "SENTILOOP_HOST": "127.0.0.1"}
    for name in SERVICES:
        env[env_name(name, "PORT")] = str(free_port())
        env.pop(env_name(name, "ADDR"), None)
    address = f"127.0.0.1:{env['SENTILOOP_REGISTRY_PORT']}"
    first = subprocess.Popen(
        [sys.executable, "-m", "sentiloop.serve", "registry"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while health(address) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "the first registry did not start"
            time.sleep(0.2)
        second = subprocess.run(
            [sys.executable, "-m", "sentiloop.serve", "registry"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert f"cannot listen on {address}" in second.stderr + second.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
