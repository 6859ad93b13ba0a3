"""The mesh health aggregate: every process can answer for the whole mesh."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
from google.api import httpbody_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sentiloop.core import metrics
from sentiloop.core.config import SERVICES, Settings
from sentiloop.v1 import health_pb2 as mesh_pb2
from sentiloop.v1 import health_pb2_grpc as mesh_pb2_grpc

# Envoy's Lua filter turns this response header into the HTTP status for JSON
# clients (gRPC clients keep their normal OK response and read `status`).
HTTP_STATUS_HEADER = "x-sentiloop-http-status"
# ... and merges this JSON object (the API's error fields) into the JSON body.
ERROR_FIELDS_HEADER = "x-sentiloop-error-json"
CHECK_TIMEOUT_SECONDS = 1.0
# A process that cannot answer a scrape within this is reported down (sentiloop_scrape_up
# 0), not allowed to hold the whole scrape past Prometheus' own 10 s timeout.
SCRAPE_TIMEOUT_SECONDS = 3.0


def scrape_targets(settings: Settings) -> list[tuple[str, str]]:
    """Every process of the mesh as (service, address), each replica included."""
    return [(name, address) for name in SERVICES for address in settings.process_addresses(name)]


class MeshHealthServicer(mesh_pb2_grpc.MeshHealthServiceServicer):
    def __init__(self, settings: Settings, service_token: str) -> None:
        self._settings = settings
        self._service_token = service_token

    async def _check(self, service: str) -> str:
        # A fresh channel per check: a cached one sits in reconnect backoff after its
        # peer restarts and would report it unreachable long after it is back.
        async with grpc.aio.insecure_channel(self._settings.address(service)) as channel:
            try:
                response = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICES[service][1]),
                    timeout=CHECK_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError:
                return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def GetMeshHealth(
        self, request: mesh_pb2.GetMeshHealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> mesh_pb2.GetMeshHealthResponse:
        names = list(SERVICES)
        statuses = await asyncio.gather(*(self._check(name) for name in names))
        services = dict(zip(names, statuses, strict=True))
        healthy = all(status == "SERVING" for status in statuses)
        if not healthy:
            down = ", ".join(f"{n} ({s})" for n, s in services.items() if s != "SERVING")
            message = f"the mesh is degraded: not serving: {down}"
            fields = {
                "error": message,
                "detail": "UNAVAILABLE",
                "code": 14,
                "message": message,
                "details": [],
            }
            await context.send_initial_metadata(
                ((HTTP_STATUS_HEADER, "503"), (ERROR_FIELDS_HEADER, json.dumps(fields)))
            )
        return mesh_pb2.GetMeshHealthResponse(
            status="ok" if healthy else "degraded", services=services
        )

    async def _scrape(self, address: str) -> bytes | None:
        async with grpc.aio.insecure_channel(address) as channel:
            try:
                body = await mesh_pb2_grpc.MeshHealthServiceStub(channel).GetMetrics(
                    mesh_pb2.GetMetricsRequest(this_process_only=True),
                    metadata=(("authorization", f"Bearer {self._service_token}"),),
                    timeout=SCRAPE_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError:
                return None
        data: bytes = body.data
        return data

    async def GetMetrics(
        self, request: mesh_pb2.GetMetricsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> httpbody_pb2.HttpBody:
        if request.this_process_only:
            text = metrics.exposition()
        else:
            # Every process, this one too, over the wire: one path for all of them.
            targets = scrape_targets(self._settings)
            texts = await asyncio.gather(*(self._scrape(address) for _, address in targets))
            text = metrics.merge(
                [
                    (service, address, body)
                    for (service, address), body in zip(targets, texts, strict=True)
                ]
            )
        return httpbody_pb2.HttpBody(content_type=metrics.CONTENT_TYPE, data=text)
