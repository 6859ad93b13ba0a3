"""Start-up time of the whole mesh, and SubmitFeedback latency: gRPC straight to the
service (the baseline) vs gRPC through Envoy vs JSON through Envoy, in one run.

    .venv/bin/python benchmarks/mesh_latency.py [--calls 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from latency import print_latency_table

from sentiloop.testing import start_mesh
from sentiloop.v1 import feedback_pb2 as pb
from sentiloop.v1 import feedback_pb2_grpc as pb_grpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="calls per path")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--startups", type=int, default=3, help="mesh start-ups to time")
    args = parser.parse_args()

    startups = []
    for _ in range(args.startups - 1):
        with tempfile.TemporaryDirectory() as tmp:
            running = start_mesh(Path(tmp))
            startups.append(running.startup_seconds)
            running.stop()

    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp))
        startups.append(mesh.startup_seconds)
        direct = grpc.insecure_channel(mesh.address("feedback"))
        via_envoy = grpc.insecure_channel(mesh.envoy_address)
        direct_stub = pb_grpc.FeedbackServiceStub(direct)
        envoy_stub = pb_grpc.FeedbackServiceStub(via_envoy)
        http = httpx.Client(base_url=mesh.url)
        request = pb.SubmitFeedbackRequest(
            text="This product is amazing!", model_prediction="positive", user_label="positive"
        )
        body = {"text": request.text, "model_prediction": "positive", "user_label": "positive"}

        def grpc_direct() -> None:
            direct_stub.SubmitFeedback(request, timeout=5)

        def grpc_envoy() -> None:
            envoy_stub.SubmitFeedback(request, timeout=5)

        def json_envoy() -> None:
            response = http.post("/feedback", json=body)
            response.raise_for_status()

        paths: dict[str, Callable[[], None]] = {
            "gRPC direct": grpc_direct,
            "gRPC via Envoy": grpc_envoy,
            "JSON via Envoy": json_envoy,
        }
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for call in paths.values():  # warm-up: connections, caches
            for _ in range(50):
                call()
        per_round = max(1, args.calls // args.rounds)
        for _ in range(args.rounds):
            for name, call in paths.items():
                for _ in range(per_round):
                    started = time.perf_counter()
                    call()
                    samples[name].append((time.perf_counter() - started) * 1000)
        http.close()
        direct.close()
        via_envoy.close()
        mesh.stop()

    print(f"mesh start-up (sentiloop up -> /health 200 and Envoy routing), {len(startups)} runs:")
    print(f"  median {statistics.median(startups):.2f} s, max {max(startups):.2f} s")
    print_latency_table(
        f"SubmitFeedback latency, {per_round * args.rounds} sequential calls per path (ms):",
        samples,
        "gRPC direct",
        3,
    )


if __name__ == "__main__":
    main()
