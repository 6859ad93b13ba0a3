"""The server runner every service shares: a grpc.aio server on its own port with
the standard health service, reflection, the mesh health aggregate, request-id
aware logs, domain-error mapping, and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from sentiloop.core import errors, metrics, tracing
from sentiloop.core.auth import Credentials
from sentiloop.core.config import MESH_HEALTH_SERVICE, SERVICES, Settings
from sentiloop.core.logs import configure_logging, request_id_var

log = logging.getLogger("sentiloop.server")

_CODES: dict[type[errors.SentiloopError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


# Messages echo what the caller sent; a long one would overflow the peer's metadata
# limit (16 KiB in grpc) and turn a clear error into a broken stream.
MAX_MESSAGE_LENGTH = 1000


def _shortened(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "… (message shortened)"


def status_for(error: errors.SentiloopError) -> grpc.Status:
    """The one place where domain errors become gRPC statuses (with google.rpc details)."""
    code = next(
        (c for kind, c in _CODES.items() if isinstance(error, kind)), grpc.StatusCode.UNKNOWN
    )
    status = status_pb2.Status(code=code.value[0], message=_shortened(error.message))
    if isinstance(error, errors.InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_shortened(name, 200), description=_shortened(why, 500)
                )
                for name, why in error.violations.items()
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


class _Undecodable:
    """Stands for a request whose bytes are not a valid message of its type (grpc would
    otherwise answer UNKNOWN with the decoder's exception text)."""

    def __init__(self, error: DecodeError) -> None:
        self.reason = (
            "a string field is not valid UTF-8"
            if "UTF-8" in str(error)
            else "it is not a valid message of its type"
        )


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as error:
            return _Undecodable(error)

    return deserialize


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument({"request": f"cannot be read: {request.reason}"})


# What a caller sees of an error nobody anticipated: never the exception's own text,
# which can carry internals (it is logged with the request id instead).
INTERNAL_MESSAGE = "internal error; the service logged it under this request's x-request-id"


def _header(metadata: Any, name: str) -> str:
    for key, value in metadata or ():
        if key == name:
            return str(value)
    return ""


@contextlib.asynccontextmanager
async def _mapped_errors(
    method: str, metadata: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    """One call's request id, span, log line, metrics and error mapping, whatever its kind
    of streaming."""
    token = request_id_var.set(_header(metadata, "x-request-id"))
    call_span = tracing.start_call(method, _header(metadata, tracing.TRACEPARENT))
    started = time.perf_counter()
    code = "OK"
    try:
        yield
    except errors.SentiloopError as error:
        status = status_for(error)
        code = status.code.name
        await _abort(context, status)
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception:
        code = _code_of(context)
        if code != "UNKNOWN":
            raise  # the servicer aborted with a status of its own
        log.exception("unhandled error in %s", method)
        code = "INTERNAL"
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    finally:
        _log_call(method, code, started)
        tracing.finish_call(call_span, code)
        # A stream grpc cancels is finalized from another task's context.
        with contextlib.suppress(ValueError):
            request_id_var.reset(token)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller's credential (core.auth), binds the request id to the logs, maps
    domain errors, and logs every call."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        metadata = handler_call_details.invocation_metadata

        def authorize() -> None:
            self._credentials.authorize(method, _header(metadata, "authorization"))

        if handler.unary_unary is not None:
            inner_unary: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with _mapped_errors(method, metadata, context):
                    authorize()
                    _check_decoded(request)
                    return await inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async with _mapped_errors(method, metadata, context):
                    authorize()
                    _check_decoded(request)
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:  # client streaming (uploads)
            inner_upload: Any = handler.stream_unary

            async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for request in requests:
                    _check_decoded(request)
                    yield request

            async def upload(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with _mapped_errors(method, metadata, context):
                    authorize()
                    return await inner_upload(checked(requests), context)

            return grpc.stream_unary_rpc_method_handler(
                upload,
                request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return code_pb2.Code.Name(code)
    return "UNKNOWN"


def _log_call(method: str, code: str, started: float) -> None:
    seconds = time.perf_counter() - started
    metrics.observe_rpc(method, code, seconds)
    log.info(
        "rpc %s %s",
        method,
        code,
        extra={"fields": {"rpc": method, "code": code, "duration_ms": round(seconds * 1000, 3)}},
    )


@dataclass
class ServiceApp:
    """What one service process serves: its servicer(s) plus start/stop hooks."""

    name: str
    register: Callable[[grpc.aio.Server], None]
    startup: Callable[[], Awaitable[None]] | None = None
    # Runs before the server stops taking calls and waits for in-flight ones (ends
    # streams that would otherwise hold shutdown for the whole grace period).
    before_stop: Callable[[], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None
    extra_service_names: list[str] = field(default_factory=list)


async def run_service(app: ServiceApp, settings: Settings) -> None:
    from sentiloop.core.mesh_health import MeshHealthServicer
    from sentiloop.v1 import health_pb2_grpc as mesh_health_pb2_grpc

    service_full_name = SERVICES[app.name][1]
    # gRPC sets SO_REUSEPORT by default: a second process on the same port (a stale one, or
    # a second mesh) would silently take half of the calls. Without it the bind fails loudly.
    credentials = Credentials.from_settings(settings)
    metrics.configure(settings.metrics_enabled)
    tracing.configure(settings, app.name)
    server = grpc.aio.server(
        interceptors=[CallInterceptor(credentials)],
        options=[("grpc.so_reuseport", 0)],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    mesh_health = MeshHealthServicer(settings, credentials.service)
    mesh_health_pb2_grpc.add_MeshHealthServiceServicer_to_server(mesh_health, server)
    app.register(server)
    served = [service_full_name, MESH_HEALTH_SERVICE, *app.extra_service_names]
    reflection.enable_server_reflection(
        [
            *served,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    for name in ("", *served):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    address = f"{settings.host}:{settings.ports[app.name]}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:  # grpcio raises where older versions returned 0
        raise SystemExit(f"{app.name}: cannot listen on {address}: {error}") from None
    if bound == 0:
        raise SystemExit(f"{app.name}: cannot listen on {address}")
    await server.start()
    log.info("listening on %s", address, extra={"fields": {"address": address}})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if app.startup is not None:
        await app.startup()
    for name in ("", *served):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving")

    await stop.wait()
    log.info("shutting down: refusing new calls, letting in-flight calls finish")
    await health_servicer.enter_graceful_shutdown()
    if app.before_stop is not None:
        await app.before_stop()
    await server.stop(settings.shutdown_grace_seconds)
    if app.shutdown is not None:
        await app.shutdown()
    tracing.shutdown()
    log.info("stopped")


def main_for(app_factory: Callable[[Settings], ServiceApp], name: str) -> None:
    from sentiloop.core.config import load_settings

    settings = load_settings()
    configure_logging(name, settings.log_level)
    app = app_factory(settings)
    asyncio.run(run_service(app, settings))
