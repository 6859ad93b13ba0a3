"""OpenTelemetry traces: a server span for every call a service answers, exported over
OTLP/HTTP to ``settings.otlp_endpoint`` (OpenTelemetry's OTEL_EXPORTER_OTLP_ENDPOINT).

The request id that already travels with every call (Envoy's x-request-id, a UUID)
becomes the trace: a call that arrives without a ``traceparent`` starts a trace whose id
is its request id, so the id a client sees in the response's x-request-id header finds the
trace. Calls to other services carry W3C ``traceparent`` (core/clients.py), so the callee's
span is a child of the caller's.

Unset, tracing is off: nothing here imports OpenTelemetry, and each call costs one
``is None`` check."""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sentiloop.core.config import Settings
from sentiloop.core.logs import request_id_var

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

TRACEPARENT = "traceparent"

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
# The span of the call this task serves. Kept in a context variable of our own rather than
# attached as OpenTelemetry's current context: grpc.aio finalizes a cancelled stream from
# another task, where detaching OpenTelemetry's context would log an error.
_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "sentiloop_span", default=None
)


def enabled() -> bool:
    return _tracer is not None


def trace_id_of(request_id: str) -> int:
    """The trace id a request id gives: the UUID's 128 bits; 0 when it is not a UUID."""
    try:
        return uuid.UUID(request_id).int
    except ValueError:
        return 0


def configure(settings: Settings, service: str) -> None:
    """Starts exporting spans when ``settings.otlp_endpoint`` is set; otherwise nothing."""
    global _tracer, _provider
    if not settings.otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RequestIdGenerator(RandomIdGenerator):
        """A new trace (a call without traceparent) takes the request id as its id."""

        def generate_trace_id(self) -> int:
            return trace_id_of(request_id_var.get()) or super().generate_trace_id()

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"sentiloop-{service.replace('_', '-')}"}),
        id_generator=RequestIdGenerator(),
    )
    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _provider, _tracer = provider, provider.get_tracer("sentiloop")


def shutdown() -> None:
    """Sends the spans still buffered (at a service's stop)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@dataclass
class CallSpan:
    span: Span
    token: contextvars.Token[Span | None]


def start_call(method: str, traceparent: str) -> CallSpan | None:
    """The span of one call ``method`` (``/package.Service/Method``) answers, with its
    caller's ``traceparent`` (when it sent one) as the parent; None when tracing is off.
    End it with ``finish_call``."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = (
        TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent}) if traceparent else None
    )
    service, _, name = method.lstrip("/").partition("/")
    span = _tracer.start_span(
        method.lstrip("/"),
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "sentiloop.request_id": request_id_var.get(),
        },
    )
    return CallSpan(span, _current.set(span))


def finish_call(call: CallSpan | None, code: str) -> None:
    """Ends a call's span with its gRPC status code (an error unless OK)."""
    if call is None:
        return
    from opentelemetry.trace import Status, StatusCode

    call.span.set_attribute("rpc.grpc.status_code", code)
    if code != "OK":
        call.span.set_status(Status(StatusCode.ERROR, code))
    call.span.end()
    # A stream grpc cancels is finalized from another task's context.
    with contextlib.suppress(ValueError):
        _current.reset(call.token)


def outgoing_traceparent() -> str:
    """What a call to another service carries so that its span joins this trace; "" when
    tracing is off or no call is being served."""
    span = _current.get()
    if span is None:
        return ""
    context = span.get_span_context()
    # W3C trace context, version 00, sampled.
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
