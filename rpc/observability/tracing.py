"""OpenTelemetry spans for calls, casts and events, on the middleware seam.

A call makes a CLIENT span in the caller and a SERVER span in the worker; a cast or
an event a PRODUCER and a CONSUMER span. The context travels in the message's
AMQP headers as W3C ``traceparent``, ``tracestate`` and ``baggage`` (see
docs/protocol.md), and the worker makes the handler's span current on the thread
or task that runs it, so the calls a handler makes are its children. Only
``opentelemetry-api`` is needed: with no SDK installed every span is a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

import rpc
from rpc import protocol
from rpc.errors import RemoteError
from rpc.middleware import ClientCall, Middleware, Outcome, ServerCall

#: ``rpc.system`` of every span: this framework's own protocol.
RPC_SYSTEM = "rpc"
MESSAGING_SYSTEM = "rabbitmq"

_SPAN = "rpc_tracing_span"
_TOKEN = "rpc_tracing_token"

_CLIENT_KINDS = {"call": SpanKind.CLIENT, "cast": SpanKind.PRODUCER}
_SERVER_KINDS = {
    "call": SpanKind.SERVER,
    "cast": SpanKind.CONSUMER,
    "event": SpanKind.CONSUMER,
}


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads trace headers from AMQP headers: text only, whatever else arrives."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


HEADERS = _HeaderGetter()


def extract(headers: Mapping[str, Any]) -> otel_context.Context:
    """The context a message's headers carry; an empty one if they carry none.

    A malformed ``traceparent`` gives an empty context, and so a new trace: what
    arrives on the wire never fails a call.
    """
    if not any(name in headers for name in protocol.TRACE_HEADERS):
        return otel_context.Context()  # the common case without an SDK: no work
    try:
        return propagate.extract(headers, getter=HEADERS)
    except Exception:
        return otel_context.Context()


def error_type(error: BaseException) -> str:
    """``error.type`` of a failure: a remote error's own type, else the class."""
    if isinstance(error, RemoteError) and error.exc_type:
        return str(error.exc_type)
    return type(error).__qualname__


def _failed(span: Span, error: BaseException) -> None:
    span.set_attribute("error.type", error_type(error))
    span.set_status(Status(StatusCode.ERROR, str(error)))


def _attributes(
    service: str, method: str, exchange: str, routing_key: str, operation: str
) -> dict[str, str]:
    """The semantic-convention attributes both sides of a message's spans carry."""
    return {
        "rpc.system": RPC_SYSTEM,
        "rpc.service": service,
        "rpc.method": method,
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.operation.type": operation,
    }


def _destination(kind: str, service: str, method: str) -> tuple[str, str]:
    """The exchange and routing key a call, cast or event is published to."""
    if kind == "event":
        return protocol.EVENTS_EXCHANGE, protocol.event_routing_key(service, method)
    return protocol.RPC_EXCHANGE, protocol.routing_key(service, method)


class TracingMiddleware(Middleware):
    """Spans for every call, cast and event sent, and every handler run.

    ``tracer_provider`` defaults to the global one (``trace.set_tracer_provider``),
    looked up as spans are made, so one set after this middleware still counts.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(
            "rpc", rpc.__version__, tracer_provider=tracer_provider
        )

    # -- the caller's side ---------------------------------------------------------

    def before_send(self, call: ClientCall) -> None:
        span = self._tracer.start_span(
            f"{call.service}/{call.method}",
            kind=_CLIENT_KINDS.get(call.kind, SpanKind.PRODUCER),
        )
        if span.is_recording():
            exchange, routing_key = _destination(call.kind, call.service, call.method)
            operation = "send" if call.kind == "call" else "publish"
            span.set_attributes(
                _attributes(call.service, call.method, exchange, routing_key, operation)
            )
            if call.correlation_id is not None:
                span.set_attribute(
                    "messaging.message.conversation_id", call.correlation_id
                )
        # With no SDK the span is a no-op: pass on the context we are in, so a
        # trace still goes through a service that records none of it.
        if span.get_span_context().is_valid:
            propagate.inject(call.headers, context=trace.set_span_in_context(span))
        elif trace.get_current_span().get_span_context().is_valid or baggage.get_all():
            propagate.inject(call.headers)
        call.state[_SPAN] = span

    def after_send(self, call: ClientCall, outcome: Outcome) -> None:
        span = call.state.get(_SPAN)
        if span is None:
            return
        if outcome.error is not None:
            _failed(span, outcome.error)
        span.end()

    # -- the worker's side ---------------------------------------------------------

    def before_handler(self, call: ServerCall) -> Outcome | None:
        parent = extract(call.headers)
        span = self._tracer.start_span(
            f"{call.service}/{call.method}",
            context=parent,
            kind=_SERVER_KINDS.get(call.kind, SpanKind.INTERNAL),
        )
        if span.is_recording():
            request = call.context.request
            exchange, routing_key = _destination(call.kind, call.service, call.method)
            if call.kind == "event" and request.event_type is not None:
                exchange = protocol.EVENTS_EXCHANGE
                routing_key = protocol.event_routing_key(
                    request.caller or call.service, request.event_type
                )
            span.set_attributes(
                _attributes(call.service, call.method, exchange, routing_key, "process")
            )
            if request.correlation_id is not None:
                span.set_attribute(
                    "messaging.message.conversation_id", request.correlation_id
                )
        # Current on this thread or task while the handler runs: its calls are the
        # span's children. A no-op span (no SDK) leaves the caller's context
        # current, which its calls then pass on.
        current = (
            trace.set_span_in_context(span, parent)
            if span.get_span_context().is_valid
            else parent
        )
        call.state[_TOKEN] = otel_context.attach(current)
        call.state[_SPAN] = span
        return None

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        span = call.state.get(_SPAN)
        if span is None:
            return
        if outcome.error is not None:
            _failed(span, outcome.error)
        span.end()
        otel_context.detach(call.state[_TOKEN])


def current_trace_id() -> str | None:
    """The trace id of the span current here, as 32 hex digits; None outside one."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")
