"""The wire contract: names, headers and envelopes."""

from __future__ import annotations

import pytest

from rpc import protocol
from rpc.errors import InvalidArgumentsError, MethodNotFoundError, RemoteError


def test_names_are_built_from_the_service_name():
    assert protocol.service_queue("greeter") == "rpc-greeter"
    assert protocol.routing_key("greeter", "hello") == "greeter.hello"
    assert protocol.service_binding("greeter") == "greeter.*"
    assert protocol.dead_letter_queue("greeter") == "rpc-greeter.dead-letter"


@pytest.mark.parametrize("name", ["", "a.b", "a b", "a*", "#", "é"])
def test_service_names_that_would_break_routing_are_refused(name):
    with pytest.raises(ValueError, match="invalid service name"):
        protocol.check_service_name(name)


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a.b"])
def test_method_names_must_be_identifiers(name):
    with pytest.raises(ValueError, match="invalid method name"):
        protocol.check_method_name(name)


def test_expiration_is_the_remaining_time_in_whole_milliseconds():
    assert protocol.expiration_ms(deadline=100.25, now=100.0) == "250"
    assert protocol.expiration_ms(deadline=100.0001, now=100.0) == "1"
    # Already late: still a positive TTL, the worker drops it on arrival.
    assert protocol.expiration_ms(deadline=99.0, now=100.0) == "1"


def test_request_headers_carry_method_deadline_and_caller():
    headers = protocol.request_headers("hello", 123.5, "frontend")
    assert headers[protocol.HEADER_METHOD] == "hello"
    assert headers[protocol.HEADER_DEADLINE] == 123.5
    assert headers[protocol.HEADER_CALLER] == "frontend"
    assert headers[protocol.HEADER_VERSION] == protocol.PROTOCOL_VERSION


def test_request_body_round_trip():
    body = protocol.request_body((1, 2), {"x": 3})
    assert protocol.parse_request_body(body) == ([1, 2], {"x": 3})
    assert protocol.parse_request_body({}) == ([], {})


@pytest.mark.parametrize(
    "body", [[], "text", {"args": {}}, {"kwargs": []}, {"args": "abc"}]
)
def test_malformed_request_bodies_are_refused(body):
    with pytest.raises(ValueError):
        protocol.parse_request_body(body)


def test_reply_with_a_result():
    assert protocol.parse_reply_body(protocol.result_body([1, "a"])) == [1, "a"]


def test_reply_with_an_error_raises_remote_error_with_details():
    body = protocol.error_body(
        {"type": "KeyError", "message": "'x'", "traceback": "Traceback..."}
    )
    with pytest.raises(RemoteError) as caught:
        protocol.parse_reply_body(body, service="svc")
    assert (caught.value.exc_type, caught.value.message) == ("KeyError", "'x'")
    assert caught.value.traceback == "Traceback..."
    assert caught.value.service == "svc"


@pytest.mark.parametrize(
    ("exc_type", "expected"),
    [
        ("MethodNotFoundError", MethodNotFoundError),
        ("InvalidArgumentsError", InvalidArgumentsError),
    ],
)
def test_framework_errors_come_back_as_their_own_classes(exc_type, expected):
    body = protocol.error_body({"type": exc_type, "message": "m"})
    with pytest.raises(expected):
        protocol.parse_reply_body(body)


def test_request_remaining_time():
    request = protocol.Request(
        service="s",
        method="m",
        args=[],
        kwargs={},
        correlation_id=None,
        reply_to=None,
        deadline=110.0,
        caller="client",
    )
    assert request.remaining(now=100.0) == 10.0
    no_deadline = protocol.Request("s", "m", [], {}, None, None, None, "client")
    assert no_deadline.remaining() is None


def test_merge_discovery_folds_workers_by_service():
    greeter = {"service": "greeter", "methods": {"hello": {"signature": "(name)"}}}
    compute = {"service": "compute", "methods": {"ping": {"signature": "()"}}}
    replies = [
        protocol.discovery_reply("host:1", [greeter, compute]),
        protocol.discovery_reply("host:2", [greeter]),
        {"worker": "odd", "services": "not a list"},
        "garbage",
        {"services": [{"service": 3, "methods": {}}, "x"]},
    ]
    merged = protocol.merge_discovery(replies)
    assert list(merged) == ["compute", "greeter"]
    assert merged["greeter"] == {"methods": greeter["methods"], "workers": 2}
    assert merged["compute"]["workers"] == 1


def test_discovery_names():
    assert protocol.DISCOVERY_EXCHANGE == "rpc.discovery"
    assert protocol.discovery_request() == {"discover": protocol.PROTOCOL_VERSION}


def test_event_queue_names_parse_back_to_their_handler():
    for handler_type in protocol.HANDLER_TYPES:
        queue = protocol.event_queue("billing", "on_order", handler_type, "ab12")
        assert protocol.event_queue_handler(queue) == ("billing", "on_order")
    assert protocol.event_queue_handler("rpc-billing") is None
    assert protocol.event_queue_handler("rpc-events.billing") is None


def test_the_queues_a_service_owns():
    assert protocol.owns_queue("billing", "rpc-billing")
    assert protocol.owns_queue("billing", "rpc-billing.shard.ab12")
    assert protocol.owns_queue("billing", "rpc-events.billing.on_order.singleton")
    assert not protocol.owns_queue("billing", "rpc-billing.dead-letter")
    assert not protocol.owns_queue("billing", "rpc-billing-eu")
    assert not protocol.owns_queue("billing", "rpc-events.audit.on_order")
    assert not protocol.owns_queue("billing", "amq.gen-xyz")


def test_a_retry_queue_sends_its_messages_back_to_their_queue_after_its_ttl():
    queue = protocol.retry_queue("rpc-billing", 2000)
    assert queue == "rpc-billing.retry.2000"
    arguments = protocol.retry_queue_arguments("rpc-billing", 2000)
    assert arguments["x-message-ttl"] == 2000
    assert arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == "rpc-billing"
    assert arguments["x-queue-type"] == "classic"
    # Unused, it goes away, but never while a copy may still wait in it.
    assert arguments["x-expires"] > 2000 + 60_000


def test_the_fallback_reply_queue_is_one_per_connection():
    first = protocol.fallback_reply_queue("client")
    assert first.startswith("rpc-reply-client-")
    assert first != protocol.fallback_reply_queue("client")


def test_routing_keys_longer_than_a_short_string_are_refused():
    assert (
        protocol.check_routing_key("s" * 100, "m" * 154) == f"{'s' * 100}.{'m' * 154}"
    )
    with pytest.raises(ValueError, match="routing key of 256 bytes"):
        protocol.check_routing_key("s" * 100, "m" * 155)
    with pytest.raises(ValueError, match="over the 255 bytes"):
        protocol.check_routing_key("s" * 300, "hello")


def test_a_deadline_is_a_finite_number_of_epoch_seconds():
    assert protocol.parse_deadline(None) is None
    assert protocol.parse_deadline(1000.5, now=990.0) == 1000.5
    assert protocol.parse_deadline(1000, now=990.0) == 1000.0


@pytest.mark.parametrize(
    "value", [True, False, "1796161200", b"1", float("nan"), float("inf"), [1], {}]
)
def test_a_deadline_of_the_wrong_type_is_malformed_not_ignored(value):
    with pytest.raises(protocol.MalformedRequestError, match="x-rpc-deadline"):
        protocol.parse_deadline(value)


def test_a_deadline_far_ahead_is_cut_to_the_maximum():
    assert protocol.parse_deadline(1e12, now=100.0) == 100.0 + protocol.MAX_DEADLINE


@pytest.mark.parametrize(
    "deadline", [1e12, float("inf"), 100.0 + protocol.MAX_DEADLINE + 5]
)
def test_the_expiration_is_always_one_rabbitmq_accepts(deadline):
    expiration = protocol.expiration_ms(deadline, now=100.0)
    assert expiration == str(protocol.MAX_DEADLINE_MS)
    assert int(expiration) < 2**32 and len(expiration) <= 255


@pytest.mark.parametrize("deadline", [50.0, float("-inf"), float("nan")])
def test_an_expiration_past_or_unreadable_is_one_millisecond(deadline):
    assert protocol.expiration_ms(deadline, now=100.0) == "1"
