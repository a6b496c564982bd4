"""One trace from the HTTP gateway through frontend to greeter, on RabbitMQ."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest
from opentelemetry.trace import SpanKind

from rpc import ClusterProxy, Config, RemoteError
from rpc.gateway import create_app
from rpc.gateway_access import GatewayAccess
from rpc.gateway_server import serving
from services.greeter import Frontend, Greeter
from tests.integration.observed_services import Counted
from tests.otel import span_exporter, wait_for_spans

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter():
    return span_exporter()


@pytest.fixture
def traced_services(rpc_cluster):
    rpc_cluster.start(Greeter, tracing=True)
    rpc_cluster.start(Frontend, tracing=True)
    return rpc_cluster


def through_gateway(broker_url: str, headers: dict[str, str]) -> tuple[int, object]:
    """POST /frontend/welcome through a gateway with tracing on."""

    async def main() -> tuple[int, object]:
        app = create_app(
            Config(broker_url=broker_url, tracing=True),
            access=GatewayAccess(allow_anonymous=True),
        )
        async with (
            serving(app, host="127.0.0.1", port=0) as (host, port),
            aiohttp.ClientSession() as session,
        ):
            response = await session.post(
                f"http://{host}:{port}/frontend/welcome",
                json={"user": "trace"},
                headers=headers,
            )
            return response.status, await response.json()

    return asyncio.run(main())


def by_kind(spans, kind, name):
    (span,) = [s for s in spans if s.kind == kind and s.name == name]
    return span


def check_chain(spans):
    """The five spans of one request, each the child of the one before."""
    http = by_kind(spans, SpanKind.SERVER, "POST /{service}/{method}")
    to_frontend = by_kind(spans, SpanKind.CLIENT, "frontend/welcome")
    frontend = by_kind(spans, SpanKind.SERVER, "frontend/welcome")
    to_greeter = by_kind(spans, SpanKind.CLIENT, "greeter/hello")
    greeter = by_kind(spans, SpanKind.SERVER, "greeter/hello")
    chain = [http, to_frontend, frontend, to_greeter, greeter]
    assert len({span.context.trace_id for span in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id
    return chain


def test_a_request_through_two_services_is_one_trace(traced_services, exporter):
    status, body = through_gateway(traced_services.config.broker_url, {})
    assert (status, body) == (200, "HELLO, TRACE!")
    http, to_frontend, frontend, to_greeter, greeter = check_chain(
        wait_for_spans(exporter, 5)
    )
    assert http.parent is None  # the gateway's span is the root
    assert http.attributes["http.response.status_code"] == 200
    for span in (to_frontend, frontend):
        assert span.attributes["rpc.system"] == "rpc"
        assert span.attributes["rpc.service"] == "frontend"
        assert span.attributes["rpc.method"] == "welcome"
        assert span.attributes["messaging.system"] == "rabbitmq"
        assert span.attributes["messaging.destination.name"] == "rpc"
    # The correlation id links the caller's span and the worker's.
    conversation = "messaging.message.conversation_id"
    assert to_greeter.attributes[conversation] == greeter.attributes[conversation]
    assert to_frontend.attributes[conversation] != to_greeter.attributes[conversation]


def test_the_gateway_continues_an_incoming_trace(traced_services, exporter):
    traceparent = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"
    status, _ = through_gateway(
        traced_services.config.broker_url, {"traceparent": traceparent}
    )
    assert status == 200
    http, *_ = check_chain(wait_for_spans(exporter, 5))
    assert format(http.context.trace_id, "032x") == INCOMING_TRACE
    assert format(http.parent.span_id, "016x") == INCOMING_SPAN


def test_a_malformed_traceparent_starts_a_new_trace(traced_services, exporter):
    status, body = through_gateway(
        traced_services.config.broker_url, {"traceparent": "00-not-a-trace-at-all"}
    )
    assert (status, body) == (200, "HELLO, TRACE!")
    http, *_ = check_chain(wait_for_spans(exporter, 5))
    assert http.parent is None


def test_a_failed_call_marks_both_spans(rpc_cluster, exporter):
    rpc_cluster.start(Counted, tracing=True)
    config = rpc_cluster.config.replace(tracing=True)
    with ClusterProxy(config=config) as cluster, pytest.raises(RemoteError):
        cluster.counted.fail()
    spans = wait_for_spans(exporter, 2)
    client = by_kind(spans, SpanKind.CLIENT, "counted/fail")
    server = by_kind(spans, SpanKind.SERVER, "counted/fail")
    assert server.parent.span_id == client.context.span_id
    for span in (client, server):
        assert span.attributes["error.type"] == "ValueError"
        assert not span.status.is_ok
