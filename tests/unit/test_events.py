"""Event names, filters, handler declarations, the event codec, poison events."""

from __future__ import annotations

import dataclasses
import json
import time

import kombu
import pytest

from rpc import BROADCAST, SINGLETON, event_handler, protocol, rpc
from rpc.entrypoints import EventHandlerEntrypoint, entrypoints_of
from rpc.errors import SerializationError
from rpc.events import decode_event, encode_event
from rpc.service import ServiceDefinition
from rpc.transport import Delivery
from tests.behaviour import take_dead_letters


def test_event_types_and_filters():
    assert protocol.check_event_type("orders.created") == "orders.created"
    assert protocol.check_event_type("0.1") == "0.1"
    for bad in ["orders.*", "a..b", "", "a b", "#"]:
        with pytest.raises(ValueError):
            protocol.check_event_type(bad)
    for good in ["orders.*", "#", "orders.#", "*.created", "0.0"]:
        assert protocol.check_event_pattern(good) == good
    for bad in ["orders.", "a*", "a b"]:
        with pytest.raises(ValueError):
            protocol.check_event_pattern(bad)


def test_queue_names_per_handler_type():
    assert protocol.event_queue("billing", "on_order", "service_pool", "i1") == (
        "rpc-events.billing.on_order"
    )
    assert protocol.event_queue("billing", "on_order", BROADCAST, "i1") == (
        "rpc-events.billing.on_order.i1"
    )
    assert protocol.event_queue("billing", "on_order", SINGLETON, "i1") == (
        "rpc-events.billing.on_order.singleton"
    )
    assert protocol.event_queue_arguments(SINGLETON) == {
        "x-single-active-consumer": True
    }
    assert protocol.event_routing_key("shop", "orders.paid") == "shop.orders.paid"
    assert protocol.event_binding("shop", "orders.*") == "shop.orders.*"


def test_sharded_calls_do_not_match_the_service_queue_binding():
    # The topic binding "<service>.*" matches two words only.
    key = protocol.shard_routing_key("cache", "get")
    assert len(key.split(".")) == 3
    assert protocol.service_binding("cache") == "cache.*"
    assert protocol.shard_binding("cache") == "cache.*.shard"


def test_event_handler_declares_an_entrypoint():
    class Billing:
        name = "billing"

        @event_handler("shop", ["orders.*", "refunds.#"], handler_type=BROADCAST)
        def on_order(self, payload):
            return payload

    (entrypoint,) = entrypoints_of(Billing.on_order)
    assert entrypoint == EventHandlerEntrypoint(
        "on_order", "shop", ("orders.*", "refunds.#"), BROADCAST
    )
    definition = ServiceDefinition.from_class(Billing)
    assert [h.name for h in definition.other_handlers] == ["on_order"]
    assert Billing().on_order(1) == 1  # still a plain method


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("bad source!", "x"), {}, "invalid service name"),
        (("shop", "a b"), {}, "invalid event filter"),
        (("shop", []), {}, "at least one event type"),
        (("shop", "x"), {"handler_type": "everyone"}, "handler_type must be"),
    ],
)
def test_event_handler_refuses_bad_declarations(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        event_handler(*args, **kwargs)


def test_shard_by_must_name_an_argument():
    @rpc(shard_by="key")
    def get(self, key):
        return key

    assert entrypoints_of(get)[0].shard_by == "key"
    with pytest.raises(TypeError, match="no argument 'user'"):

        @rpc(shard_by="user")
        def other(self, key):
            return key


def _delivery(body: bytes, **changes) -> Delivery:
    base = Delivery(
        body=body,
        content_type="application/json",
        headers={},
        correlation_id=None,
        reply_to=None,
        delivery_tag=1,
        redelivered=False,
        routing_key="shop.orders.created",
        exchange=protocol.EVENTS_EXCHANGE,
        consumer_tag="c",
        generation=1,
        properties={},
    )
    return dataclasses.replace(base, **changes)


def test_event_codec_round_trip():
    body, headers = encode_event("shop", "orders.created", {"id": 1})
    event = decode_event(_delivery(body, headers=headers))
    assert (event.source, event.event_type, event.payload) == (
        "shop",
        "orders.created",
        {"id": 1},
    )


def test_events_that_cannot_be_read_are_refused():
    with pytest.raises(SerializationError):
        decode_event(_delivery(b"{oops"))
    with pytest.raises(SerializationError):
        decode_event(_delivery(b"x", content_type="application/x-python-serialize"))
    with pytest.raises(SerializationError, match="over the limit"):
        decode_event(_delivery(b"[" + b"1," * 100 + b"1]"), limit=50)
    with pytest.raises(ValueError):
        encode_event("shop", "orders.*", {})


# -- poison events, on the in-memory transport -------------------------------------

_RUNS: dict[str, list[object]] = {}


class Picky:
    """Raises on payloads it dislikes: ``"bad"`` always, ``"flaky"`` the first time."""

    name = "picky"

    @event_handler("shop", "orders.*")
    def on_order(self, payload):
        return _judge("on_order", payload)

    @event_handler("shop", "orders.*", handler_type=BROADCAST)
    async def on_order_async(self, payload):
        return _judge("on_order_async", payload)


def _judge(handler: str, payload: object) -> None:
    runs = _RUNS.setdefault(handler, [])
    runs.append(payload)
    if payload == "bad" or (payload == "flaky" and runs.count("flaky") == 1):
        raise ValueError(f"cannot take {payload!r}")


def _wait_runs(handler: str, count: int) -> list[object]:
    deadline = time.monotonic() + 20
    while len(_RUNS.get(handler, [])) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(_RUNS.get(handler, []))


@pytest.fixture
def picky(rpc_cluster):
    _RUNS.clear()
    rpc_cluster.start(Picky, delivery_limit=3)
    yield rpc_cluster
    _RUNS.clear()


def test_a_handler_that_keeps_raising_runs_limit_times_then_is_dead_lettered(picky):
    picky.proxy.dispatch("shop", "orders.created", "bad")
    picky.proxy.dispatch("shop", "orders.created", "good")
    letters = take_dead_letters(picky.broker_url, "picky", 2)
    assert len(letters) == 2  # one per handler
    for letter in letters:
        headers = letter.headers
        assert json.loads(letter.body) == "bad"
        assert headers[protocol.HEADER_DEATH_REASON] == "handler-error"
        assert headers[protocol.HEADER_DEATH_DETAIL] == "ValueError: cannot take 'bad'"
        assert headers[protocol.HEADER_EVENT_TYPE] == "orders.created"
        assert headers[protocol.HEADER_DELIVERY_COUNT] == 3
    queues = {letter.headers[protocol.HEADER_ORIGIN_QUEUE] for letter in letters}
    assert "rpc-events.picky.on_order" in queues
    for handler in ("on_order", "on_order_async"):
        runs = _wait_runs(handler, 4)
        assert runs.count("bad") == 3  # exactly delivery_limit runs
        assert runs.count("good") == 1  # the healthy event went on


def test_a_handler_that_fails_once_gets_the_event_again(picky):
    picky.proxy.dispatch("shop", "orders.created", "flaky")
    assert _wait_runs("on_order", 2) == ["flaky", "flaky"]
    assert _wait_runs("on_order_async", 2) == ["flaky", "flaky"]
    picky.proxy.dispatch("shop", "orders.created", "bad")
    letters = take_dead_letters(picky.broker_url, "picky", 2)
    assert [json.loads(letter.body) for letter in letters] == ["bad", "bad"]
    # Only the bad one: the flaky event succeeded on its second run, before it.
    assert take_dead_letters(picky.broker_url, "picky", 1, timeout=0) == []


def test_an_unreadable_event_is_dead_lettered_at_once(picky):
    with kombu.Connection(picky.broker_url) as connection:
        connection.Producer().publish(
            b"{not json",
            exchange=protocol.EVENTS_EXCHANGE,
            routing_key="shop.orders.created",
            content_type="application/json",
            content_encoding="utf-8",
        )
    picky.proxy.dispatch("shop", "orders.created", "good")
    letters = take_dead_letters(picky.broker_url, "picky", 2)
    assert [letter.headers[protocol.HEADER_DEATH_REASON] for letter in letters] == [
        "malformed",
        "malformed",
    ]
    # The routing key said where it came from: kept for a requeue.
    assert {letter.headers[protocol.HEADER_EVENT_SOURCE] for letter in letters} == {
        "shop"
    }
    assert _wait_runs("on_order", 1) == ["good"]
    assert _wait_runs("on_order_async", 1) == ["good"]
