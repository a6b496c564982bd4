"""`rpc run -v`'s line per handler run, and discovery's listing of event handlers."""

from __future__ import annotations

import logging

import pytest

from rpc import ClusterProxy, Config, RemoteError, ServiceRunner
from rpc.call_log import CallLog
from rpc.worker.admission import lateness
from services.compute import Compute
from services.greeter import Greeter
from services.shop import Shop, Stock


def test_each_run_is_one_info_line_with_outcome_time_and_correlation_id(
    memory_broker_url, caplog
):
    config = Config(broker_url=memory_broker_url)
    with (
        caplog.at_level(logging.INFO, logger="rpc.calls"),
        ServiceRunner([Greeter, Compute], config, middleware=[CallLog()]),
        ClusterProxy(config=config) as cluster,
    ):
        assert cluster.greeter.hello("log") == "Hello, log!"
        with pytest.raises(RemoteError):
            cluster.compute.compute(count=-1)
    lines = [r.getMessage() for r in caplog.records if r.name == "rpc.calls"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("greeter.hello ok in ")
    assert " ms (call, correlation id " in lines[0]
    assert lines[0].rstrip(")").rsplit(" ", 1)[1] not in ("", "-")
    assert lines[1].startswith("compute.compute ValueError in ")


def test_a_runner_without_it_logs_no_call(memory_broker_url, caplog):
    config = Config(broker_url=memory_broker_url)
    quiet = ServiceRunner([Greeter], config)
    with caplog.at_level(logging.DEBUG), quiet, ClusterProxy(config=config) as cluster:
        cluster.greeter.hello("quiet")
    assert not [r for r in caplog.records if r.name == "rpc.calls"]


def test_discovery_lists_event_handlers_with_source_filters_and_type(
    memory_broker_url,
):
    config = Config(broker_url=memory_broker_url)
    with ServiceRunner([Stock, Shop], config), ClusterProxy(config=config) as cluster:
        listing = cluster.discover(wait=2)
    (handler,) = listing["stock"]["events"].values()
    assert listing["stock"]["events"].keys() == {"on_order"}
    assert handler["kind"] == "event_handler"
    assert handler["source_service"] == "shop"
    assert handler["event_types"] == ["orders.*"]
    assert handler["handler_type"] == "service_pool"
    assert handler["doc"] == "Count what was sold."
    assert "events" not in listing["shop"]
    assert set(listing["stock"]["methods"]) == {"sold"}


def test_a_recent_deadline_says_how_long_ago():
    assert lateness(1000.0, 1.25) == "passed 1.250 s ago"


def test_a_deadline_from_another_day_says_when_it_was():
    text = lateness(0.0, 1796161200.834)
    assert text == (
        "was 1970-01-01 00:00:00 UTC, long past (is the caller's clock wrong?)"
    )
    assert "1796161200" not in text


def test_discovery_keeps_timers_and_events_of_every_worker():
    from rpc import protocol

    timer = {"kind": "timer", "interval": 1.0}
    event = {"kind": "event_handler", "source_service": "shop"}
    with_timer = {"service": "s", "methods": {}, "timers": {"t": timer}}
    with_event = {"service": "s", "methods": {}, "events": {"e": event}}
    replies = [
        {"worker": "a", "services": [with_timer]},
        {"worker": "b", "services": [with_event]},
        {"worker": "c", "services": [{"service": "plain", "methods": {"m": {}}}]},
    ]
    merged = protocol.merge_discovery(replies)
    assert merged["s"] == {
        "methods": {}, "workers": 2, "timers": {"t": timer}, "events": {"e": event}
    }  # fmt: skip
    assert merged["plain"] == {"methods": {"m": {}}, "workers": 1}
