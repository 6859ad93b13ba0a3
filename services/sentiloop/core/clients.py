"""gRPC clients for calling the other services of the mesh. Calls carry the
current request id, so one request can be followed across services in the logs."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import grpc

from sentiloop.core import errors, tracing
from sentiloop.core.auth import Credentials
from sentiloop.core.config import Settings
from sentiloop.core.logs import request_id_var
from sentiloop.v1 import (
    evaluation_pb2_grpc,
    feedback_pb2_grpc,
    inference_pb2_grpc,
    model_init_pb2_grpc,
    notification_pb2_grpc,
    registry_pb2_grpc,
)

log = logging.getLogger("sentiloop.clients")


def mesh_error(
    service: str, error: grpc.aio.AioRpcError, field: str | None = None
) -> errors.SentiloopError:
    """A failed call to another service as this service's own error. The callee's verdict
    on the request (missing, conflicting, not ready; invalid when ``field`` names the
    caller's field it came from) passes on with its message. Anything else is the callee
    being unavailable: its text (transport errors, addresses, limits) is logged, not
    passed to the caller."""
    code, text = error.code(), error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(text or f"not found by the {service} service")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.FailedPrecondition(text)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return errors.AlreadyExists(text)
    if code == grpc.StatusCode.INVALID_ARGUMENT and field is not None:
        return errors.InvalidArgument({field: text or "is not valid"})
    log.warning("a call to the %s service failed: %s %s", service, code.name, text)
    return errors.Unavailable(f"the {service} service could not answer ({code.name}); try again")


def _with_call_metadata(details: Any, token: str) -> Any:
    """The service credential and the current request id on an outgoing call."""
    metadata = list(details.metadata or [])
    metadata.append(("authorization", f"Bearer {token}"))
    request_id = request_id_var.get()
    if request_id:
        metadata.append(("x-request-id", request_id))
    traceparent = tracing.outgoing_traceparent()
    if traceparent:
        metadata.append((tracing.TRACEPARENT, traceparent))
    return details._replace(metadata=metadata)


class _UnaryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_call_metadata(client_call_details, self._token), request)


class _StreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_call_metadata(client_call_details, self._token), request)


def _target(addresses: list[str]) -> tuple[str, list[tuple[str, Any]]]:
    """One address, or every replica `up` started (IPv4 literals) with gRPC's round-robin
    balancing, which also skips a replica that is down. A name in a deployment resolves
    to whatever balances there (ECS service discovery, a load balancer)."""
    if len(addresses) > 1 and all(_is_ipv4(address.rpartition(":")[0]) for address in addresses):
        return "ipv4:" + ",".join(addresses), [("grpc.lb_policy_name", "round_robin")]
    return addresses[0], []


def _is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False


class Clients:
    """Lazily opened channels to the other services, by service name."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._token = Credentials.from_settings(settings).service
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        channel = self._channels.get(service)
        if channel is None:
            target, options = _target(self._settings.process_addresses(service))
            channel = grpc.aio.insecure_channel(
                target,
                options=options,
                interceptors=[_UnaryInterceptor(self._token), _StreamInterceptor(self._token)],
            )
            self._channels[service] = channel
        return channel

    @property
    def registry(self) -> registry_pb2_grpc.ModelRegistryServiceAsyncStub:
        return registry_pb2_grpc.ModelRegistryServiceStub(self.channel("registry"))

    @property
    def model_init(self) -> model_init_pb2_grpc.ModelInitServiceAsyncStub:
        return model_init_pb2_grpc.ModelInitServiceStub(self.channel("model_init"))

    @property
    def inference(self) -> inference_pb2_grpc.InferenceServiceAsyncStub:
        return inference_pb2_grpc.InferenceServiceStub(self.channel("inference"))

    @property
    def feedback(self) -> feedback_pb2_grpc.FeedbackServiceAsyncStub:
        return feedback_pb2_grpc.FeedbackServiceStub(self.channel("feedback"))

    @property
    def evaluation(self) -> evaluation_pb2_grpc.EvaluationServiceAsyncStub:
        return evaluation_pb2_grpc.EvaluationServiceStub(self.channel("evaluation"))

    @property
    def notification(self) -> notification_pb2_grpc.NotificationServiceAsyncStub:
        return notification_pb2_grpc.NotificationServiceStub(self.channel("notification"))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
