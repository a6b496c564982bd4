"""Events: handler types with several workers per service, filters, catching up."""

from __future__ import annotations

import subprocess
import sys

import kombu
import pytest

from rpc import ClusterProxy, Config, ServiceRunner, protocol
from tests.integration import topology_fixtures as fixtures
from tests.integration.daemons import PROJECT_ROOT, project_env
from tests.integration.test_poison import poll_dead_letters
from tests.integration.topology_services import (
    Audit,
    Billing,
    Cacher,
    Reporter,
    Shop,
)

# Shared fixtures: a config on the test's vhost, runners, a recorder, a client.
config, record = fixtures.config, fixtures.record
runners, cluster = fixtures.runners, fixtures.cluster


def test_service_pool_each_service_gets_each_event_once(runners, cluster, record):
    runners.start(Billing)
    runners.start(Billing)
    runners.start(Audit)
    for i in range(40):
        cluster.dispatch("shop", "orders.created", {"id": i})
    billing = record.wait_for("billing", 40)
    audit = record.wait_for("audit", 40)
    assert sorted(payload["id"] for _, (_, payload) in billing) == list(range(40))
    assert sorted(payload["id"] for _, payload in audit) == list(range(40))
    # The billing workers shared the events, the audit worker got all of them.
    assert len(record.per_worker("billing")) == 2
    assert len(record.per_worker("audit")) == 1


def test_broadcast_every_worker_gets_every_event(runners, cluster, record):
    workers = [runners.start(Cacher) for _ in range(3)]
    for i in range(10):
        cluster.dispatch("shop", "orders.created", i)
    record.wait_for("cacher", 30)
    per_worker = record.per_worker("cacher")
    assert set(per_worker) == {runner.instance_id for runner in workers}
    for values in per_worker.values():
        assert sorted(values) == list(range(10))


def test_singleton_one_worker_at_a_time_and_another_takes_over(
    runners, cluster, record
):
    first = runners.start(Reporter)
    second = runners.start(Reporter)
    for i in range(20):
        cluster.dispatch("shop", "orders.created", i)
    record.wait_for("reporter", 20)
    active = record.per_worker("reporter")
    assert len(active) == 1  # only the active consumer received
    (active_id,) = active
    assert sorted(active[active_id]) == list(range(20))
    survivor = second if active_id == first.instance_id else first
    (first if survivor is second else second).stop()
    for i in range(20, 30):
        cluster.dispatch("shop", "orders.paid", i)
    record.wait_for("reporter", 30)
    taken_over = record.per_worker("reporter")[survivor.instance_id]
    assert sorted(taken_over) == list(range(20, 30))


def test_filters_select_event_types_with_wildcards(runners, cluster, record):
    runners.start(Billing, Audit)
    cluster.dispatch("shop", "users.created", {"id": "u"})  # billing: no match
    cluster.dispatch("shop", "orders.paid.late", {"id": "late"})  # '*' is one word
    cluster.dispatch("other", "orders.created", {"id": "other"})  # another source
    cluster.dispatch("shop", "orders.paid", {"id": "paid"})
    audit = record.wait_for("audit", 3)
    billing = record.wait_for("billing", 1)
    assert sorted(payload["id"] for _, payload in audit) == ["late", "paid", "u"]
    assert [value for _, value in billing] == [("orders.paid", {"id": "paid"})]


def test_a_subscriber_that_was_down_catches_up(runners, cluster, record):
    runners.start(Billing)  # declares its durable queue and binding
    runners.stop_all()
    for i in range(15):
        cluster.dispatch("shop", "orders.created", {"id": i})
    assert record.of("billing") == []
    runners.start(Billing)
    billing = record.wait_for("billing", 15)
    assert sorted(payload["id"] for _, (_, payload) in billing) == list(range(15))


def test_a_service_dispatches_through_its_dependency(runners, cluster, record):
    runners.start(Shop, Billing)
    cluster.shop.order(7)
    billing = record.wait_for("billing", 1)
    assert billing[0][1] == ("orders.created", {"id": 7})


def test_an_unreadable_event_is_dead_lettered_and_the_worker_goes_on(
    runners, cluster, record, broker_url
):
    runners.start(Billing)
    with kombu.Connection(broker_url) as connection:
        producer = connection.Producer()
        producer.publish(
            b"{not json",
            exchange=protocol.EVENTS_EXCHANGE,
            routing_key="shop.orders.created",
            content_type="application/json",
            content_encoding="utf-8",
        )
        producer.publish(
            b"payload",
            exchange=protocol.EVENTS_EXCHANGE,
            routing_key="shop.orders.created",
            content_type="application/x-python-serialize",  # pickle: never loaded
            content_encoding="binary",
        )
    cluster.dispatch("shop", "orders.created", {"id": "fine"})
    billing = record.wait_for("billing", 1)
    found = poll_dead_letters(broker_url, "billing", 2)
    assert [value for _, value in billing] == [("orders.created", {"id": "fine"})]
    assert sorted(body for body, _ in found) == [b"payload", b"{not json"]
    for _, headers in found:
        assert headers[protocol.HEADER_DEATH_REASON] == "malformed"
        assert headers[protocol.HEADER_DEATH_DETAIL]
        assert headers[protocol.HEADER_ORIGIN_QUEUE] == "rpc-events.billing.on_order"
        assert headers[protocol.HEADER_DELIVERY_COUNT] == 1  # at once, never retried
    # Neither was run or retried: the healthy event was the only one handled.
    assert record.of("billing") == billing


def test_dispatch_rejects_a_bad_event_type(cluster):
    with pytest.raises(ValueError, match="invalid event type"):
        cluster.dispatch("shop", "orders.*", {})


def test_rpc_dispatch_from_the_shell(runners, record, broker_url):
    runners.start(Billing)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpc",
            "dispatch",
            "shop",
            "orders.created",
            '{"id": "shell"}',
        ],
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    billing = record.wait_for("billing", 1)
    assert billing[0][1] == ("orders.created", {"id": "shell"})


def test_service_pool_events_survive_a_broker_restart(private_broker, record):
    config = Config(broker_url=private_broker.url, default_timeout=60)
    with ServiceRunner([Billing], config):
        pass  # the subscriber's durable queue and binding now exist
    with ClusterProxy(config=config) as publisher:
        for i in range(10):
            publisher.dispatch("shop", "orders.created", {"id": i})  # confirmed
    private_broker.restart()
    with ServiceRunner([Billing], config):
        billing = record.wait_for("billing", 10, timeout=90)
    assert sorted(payload["id"] for _, (_, payload) in billing) == list(range(10))
