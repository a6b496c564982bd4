"""The RabbitMQ permissions of each role, matched against the names the code uses."""

from __future__ import annotations

import re

import pytest

from rpc import permissions, protocol


def allows(pattern: str, name: str) -> bool:
    return re.fullmatch(pattern, name) is not None


def test_a_worker_may_use_its_own_queues_and_nobody_elses():
    granted = permissions.worker(["greeter"])
    own = [
        protocol.service_queue("greeter"),
        protocol.dead_letter_queue("greeter"),
        protocol.retry_queue(protocol.service_queue("greeter"), 1000),
        protocol.timer_queue("greeter", "tick"),
        protocol.shard_queue("greeter", "abc123"),
        protocol.event_queue("greeter", "on_order", protocol.SERVICE_POOL, "x"),
        protocol.event_queue("greeter", "on_order", protocol.BROADCAST, "abc"),
        "amq.gen-JzTY20BRgKO-HjmUJj0wLg",  # its discovery queue
    ]
    for name in own:
        assert allows(granted.configure, name), name
        assert allows(granted.read, name), name
        assert allows(granted.write, name), name
    others = [
        protocol.service_queue("shop"),
        protocol.service_queue("greeter2"),
        protocol.dead_letter_queue("shop"),
        protocol.event_queue("shop", "on_order", protocol.SERVICE_POOL, "x"),
        protocol.shard_exchange("shop"),
    ]
    for name in others:
        assert not allows(granted.configure, name), name
        assert not allows(granted.read, name), name
        assert not allows(granted.write, name), name


def test_a_worker_publishes_replies_calls_events_and_dead_letters():
    granted = permissions.worker(["greeter"])
    for exchange in (
        permissions.DEFAULT_EXCHANGE,
        protocol.RPC_EXCHANGE,
        protocol.EVENTS_EXCHANGE,
        protocol.DEAD_LETTER_EXCHANGE,
        protocol.shard_exchange("greeter"),
    ):
        assert allows(granted.write, exchange), exchange
    rpc_topic, events_topic = granted.topics
    assert (rpc_topic.exchange, events_topic.exchange) == ("rpc", "rpc.events")
    # It binds only its own requests, and dispatches events only as itself.
    assert re.match(rpc_topic.read, protocol.service_binding("greeter"))
    assert not re.match(rpc_topic.read, protocol.service_binding("shop"))
    assert re.match(rpc_topic.read, protocol.shard_binding("greeter"))
    assert re.match(events_topic.write, protocol.event_routing_key("greeter", "x.y"))
    assert not re.match(events_topic.write, protocol.event_routing_key("shop", "x"))


def test_clients_configure_only_the_exchanges_they_declare_and_read_nothing():
    granted = permissions.client()
    assert allows(granted.configure, protocol.RPC_EXCHANGE)
    assert not allows(granted.configure, protocol.service_queue("greeter"))
    assert granted.read == "^$"
    assert granted.topics == ()
    narrowed = permissions.client(["greeter"]).topics[0]
    assert re.match(narrowed.write, protocol.routing_key("greeter", "hello"))
    assert not re.match(narrowed.write, protocol.routing_key("shop", "order"))


def test_the_gateway_sends_no_events_and_the_operator_reads_only_dead_letters():
    assert not allows(permissions.gateway().write, protocol.EVENTS_EXCHANGE)
    operator = permissions.operator()
    assert allows(operator.read, protocol.dead_letter_queue("shop"))
    assert not allows(operator.read, protocol.service_queue("shop"))
    assert permissions.operator(["shop"]).read == "^(rpc\\-shop\\.dead\\-letter)$"


def test_the_rabbitmqctl_lines_quote_what_the_shell_would_expand():
    lines = permissions.worker(["greeter"]).commands("greeter-worker", "/")
    assert lines[0].startswith("rabbitmqctl set_permissions -p / greeter-worker '^(")
    assert lines[1].startswith(
        "rabbitmqctl set_topic_permissions -p / greeter-worker rpc"
    )


def test_a_service_whose_queues_would_be_every_event_queue_is_refused():
    with pytest.raises(ValueError, match="event queues"):
        permissions.worker(["events"])
    with pytest.raises(ValueError):
        permissions.for_role("worker", [])
    with pytest.raises(ValueError):
        permissions.for_role("admin", ["greeter"])
