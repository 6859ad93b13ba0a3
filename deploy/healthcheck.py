"""Container health check of a Sentiloop image: ``python /app/deploy/healthcheck.py [TARGET]``.

TARGET is a service name (``feedback``, ``model_init``, ...), ``envoy`` or ``up``; without
it, the check reads what the container runs from PID 1's command line
(``python -m sentiloop.serve NAME``, ``envoy ...`` or ``sentiloop up``).

* a service: the standard ``grpc.health.v1`` Check of its own port must say SERVING
  (services answer NOT_SERVING until they are ready, and while they shut down);
* ``envoy``: Envoy's admin ``/ready`` (LIVE), not the mesh's ``/health``: one degraded
  backend must not get the proxy restarted;
* ``up`` (everything in one container): the mesh's ``GET /health`` through Envoy.

Exit status 0 when healthy, 1 otherwise (what Docker, compose and ECS expect)."""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORTS = {
    "inference": 8000,
    "feedback": 8001,
    "registry": 8002,
    "evaluation": 8003,
    "retraining": 8004,
    "notification": 8005,
    "model_init": 8006,
}
TIMEOUT = 3.0


def target_from_pid1() -> str:
    try:
        args = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "up"
    words = [a.decode(errors="replace") for a in args if a]
    for index, word in enumerate(words):
        if word == "sentiloop.serve" and index + 1 < len(words):
            return words[index + 1]
        if os.path.basename(word) == "envoy":
            return "envoy"
    return "up"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def grpc_serving(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def check(target: str) -> bool:
    if target == "envoy":
        admin = os.environ.get("SENTILOOP_ENVOY_ADMIN_PORT", "9901")
        return http_ok(f"http://127.0.0.1:{admin}/ready")
    if target == "up":
        port = os.environ.get("SENTILOOP_ENVOY_PORT", "8080")
        return http_ok(f"http://127.0.0.1:{port}/health")
    if target not in DEFAULT_PORTS:
        print(f"healthcheck: unknown target {target!r}", file=sys.stderr)
        return False
    port = int(os.environ.get(f"SENTILOOP_{target.upper()}_PORT", DEFAULT_PORTS[target]))
    return grpc_serving(port)


def main(argv: list[str]) -> int:
    target = argv[0] if argv else target_from_pid1()
    healthy = check(target)
    if not healthy:
        print(f"healthcheck: {target} is not healthy", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
