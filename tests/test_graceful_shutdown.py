"""SIGTERM lets in-flight calls finish: every acknowledged record is stored, and
the process exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from sentiloop.core.config import env_name
from sentiloop.feedback.store import FeedbackStore
from sentiloop.testing import free_port
from sentiloop.v1 import feedback_pb2 as pb
from sentiloop.v1 import feedback_pb2_grpc as pb_grpc


def start_feedback(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SENTILOOP_DATA_DIR": str(data_dir),
        env_name("feedback", "PORT"): str(port),
    }
    process = subprocess.Popen([sys.executable, "-m", "sentiloop.serve", "feedback"], env=env)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return process


async def flood(address: str, count: int, process: subprocess.Popen[bytes]) -> dict[str, str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FeedbackServiceStub(channel)

        async def submit(i: int) -> tuple[str, str]:
            try:
                await stub.SubmitFeedback(
                    pb.SubmitFeedbackRequest(text=f"text {i}", user_label="positive"), timeout=20
                )
                return f"text {i}", "OK"
            except grpc.aio.AioRpcError as error:
                return f"text {i}", error.code().name

        tasks = [asyncio.create_task(submit(i)) for i in range(count)]
        await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        return dict(await asyncio.gather(*tasks))


def test_sigterm_finishes_in_flight_calls(tmp_path: Path) -> None:
    port = free_port()
    process = start_feedback(tmp_path, port)
    outcomes = asyncio.run(flood(f"127.0.0.1:{port}", 400, process))
    assert process.wait(timeout=30) == 0
    acknowledged = {text for text, code in outcomes.items() if code == "OK"}
    assert acknowledged, "no call finished"
    refused = {code for code in outcomes.values() if code != "OK"}
    assert refused <= {"UNAVAILABLE", "CANCELLED"}, refused
    stored = {
        r.text for r in FeedbackStore(tmp_path / "feedback" / "feedback.db", 100).list(limit=1000)
    }
    assert acknowledged <= stored


def test_health_is_not_serving_until_ready_then_serving(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = free_port()
    process = start_feedback(tmp_path, port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            status = None
            while time.monotonic() < deadline:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(service="sentiloop.v1.FeedbackService")
                ).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                time.sleep(0.05)
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        process.terminate()
        process.wait(timeout=30)
