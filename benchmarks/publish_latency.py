"""Publish latency with and without a subscriber that stops reading.

    .venv/bin/python benchmarks/publish_latency.py [--events 300] [--rounds 3]

Starts the mesh and publishes events of about 20 KB (a 15 KB attribute, a 5 KB message)
to NotificationService over gRPC, in rounds that alternate two conditions: no subscriber
(the baseline), and one subscriber that reads everything beside one that never reads (it
is dropped once its queue is full). Prints the median and 99th percentile per condition and
their ratio. What it guards: a slow subscriber must not hold up publishing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from sentiloop.testing import start_mesh
from sentiloop.v1 import notification_pb2 as pb
from sentiloop.v1 import notification_pb2_grpc as pb_grpc


def publish_round(stub: pb_grpc.NotificationServiceStub, prefix: str, events: int) -> list[float]:
    attributes = struct_pb2.Struct()
    attributes.update({"blob": "x" * 15000})
    request = pb.PublishRequest(type=f"{prefix}big", message="y" * 5000, attributes=attributes)
    latencies = []
    for _ in range(events):
        started = time.perf_counter()
        stub.Publish(request, timeout=30)
        latencies.append(time.perf_counter() - started)
    return latencies


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp), extra_env={"SENTILOOP_NOTIFICATION_QUEUE_SIZE": "64"})
        try:
            with mesh.operator_channel(mesh.address("notification"), "service") as channel:
                stub = pb_grpc.NotificationServiceStub(channel)
                alone: list[float] = []
                slow_present: list[float] = []
                for _ in range(args.rounds):
                    alone += publish_round(stub, f"bench{uuid.uuid4().hex[:8]}.", args.events)
                    prefix = f"bench{uuid.uuid4().hex[:8]}."
                    with grpc.insecure_channel(mesh.address("notification")) as other:
                        subscriber = pb_grpc.NotificationServiceStub(other)
                        slow = subscriber.Subscribe(pb.SubscribeRequest(type_prefixes=[prefix]))
                        slow.initial_metadata()  # and then never reads
                        fast = subscriber.Subscribe(pb.SubscribeRequest(type_prefixes=[prefix]))
                        fast.initial_metadata()
                        reader = threading.Thread(
                            target=lambda s=fast: [
                                None for _ in zip(range(args.events), s, strict=False)
                            ]
                        )
                        reader.start()
                        slow_present += publish_round(stub, prefix, args.events)
                        reader.join(timeout=60)
                        slow.cancel()
                        fast.cancel()
        finally:
            mesh.stop()
    for name, values in (("no subscriber", alone), ("slow + fast subscriber", slow_present)):
        print(
            f"{name:<24} median {statistics.median(values) * 1000:6.2f} ms"
            f"  p99 {p99(values) * 1000:6.2f} ms  ({len(values)} publishes)"
        )
    print(
        f"ratio (slow present / alone): median"
        f" {statistics.median(slow_present) / statistics.median(alone):.2f}x,"
        f" p99 {p99(slow_present) / p99(alone):.2f}x"
    )


if __name__ == "__main__":
    main()
