"""A caller gives up or dies: its request must not run later, and handlers see the
time their caller has left.

Two mechanisms, each proven on its own: the broker drops a request still queued at
its deadline (per-message expiration), and a worker drops one it receives too late
(the ``x-rpc-deadline`` header), e.g. one prefetched while a slow handler ran.
"""

from __future__ import annotations

import time
import uuid

import kombu
import pytest

from rpc import CallTimeoutError, ClusterProxy, Config, ServiceRunner
from tests.integration import fixtures
from tests.integration.faults import wait_for
from tests.integration.fixtures import tokens
from tests.integration.ledger_service import Ledger


@pytest.fixture
def config(broker_url: str) -> Config:
    # One handler thread: requests queue up behind a slow one.
    return Config(broker_url=broker_url, default_timeout=60, max_workers=1)


# Shared fixtures: Ledger in this process, a client, both on this module's config.
runner, cluster = fixtures.runner, fixtures.cluster


def queue_depth(broker_url: str, queue: str) -> int:
    with kombu.Connection(broker_url) as connection:
        _, count, _ = connection.channel().queue_declare(queue, passive=True)
        return int(count)


@pytest.mark.parametrize("caller", ["gives up", "dies"])
def test_requests_of_callers_gone_are_never_run(runner, cluster, config, caller):
    blocker = uuid.uuid4().hex
    busy = cluster.ledger.record.call_async(blocker, seconds=3)
    wait_for(lambda: Ledger.count(blocker), 30, "the slow handler to start")
    abandoned = tokens(5)
    if caller == "gives up":
        futures = [
            cluster.ledger.record.with_options(timeout=1).call_async(t)
            for t in abandoned
        ]
        for future in futures:
            with pytest.raises(CallTimeoutError):
                future.result()
    else:
        with ClusterProxy(config=config, name="doomed") as doomed:
            for t in abandoned:
                doomed.ledger.record.with_options(timeout=1).call_async(t)
        # The caller is gone (connection closed) with its requests still queued.

    assert busy.result() == blocker
    # Queued after the abandoned ones on a one-thread worker: once this is
    # answered, every abandoned request was dropped or run.
    last = uuid.uuid4().hex
    assert cluster.ledger.record(last) == last
    assert [Ledger.count(t) for t in abandoned] == [0] * 5


@pytest.fixture
def idle_queue(config: Config) -> str:
    """The service queue, declared by a worker that then stopped: nobody consumes."""
    runner = ServiceRunner([Ledger], config)
    runner.start()
    runner.stop()
    return "rpc-ledger"


def test_broker_drops_a_queued_request_at_its_deadline(broker_url, idle_queue, cluster):
    token = uuid.uuid4().hex
    future = cluster.ledger.record.with_options(timeout=1).call_async(token)
    with pytest.raises(CallTimeoutError):
        future.result()
    # No worker ever looked at it: only the message's expiration can remove it.
    wait_for(
        lambda: queue_depth(broker_url, idle_queue) == 0, 30, "the request to expire"
    )
    assert Ledger.count(token) == 0


def test_worker_drops_a_request_that_arrives_after_its_deadline(
    broker_url, runner, cluster
):
    token = uuid.uuid4().hex
    # Published the way a caller with a slow clock or a long queue would see it:
    # no broker expiration, a deadline already in the past.
    with kombu.Connection(broker_url) as connection:
        kombu.Producer(connection.channel()).publish(
            {"args": [token], "kwargs": {}},
            serializer="json",
            exchange="rpc",
            routing_key="ledger.record",
            headers={"x-rpc-method": "record", "x-rpc-deadline": time.time() - 5},
            correlation_id="late",
        )
    after = uuid.uuid4().hex
    assert cluster.ledger.record(after) == after
    assert Ledger.count(token) == 0
    # Acknowledged, not left to be redelivered.
    wait_for(lambda: runner.in_flight == 0, 30, "the worker to be idle")
    assert queue_depth(broker_url, "rpc-ledger") == 0


def test_handler_sees_the_time_its_caller_has_left(runner, cluster):
    remaining = cluster.ledger.remaining.with_options(timeout=20)()
    assert 0 < remaining <= 20
    blocker = uuid.uuid4().hex
    busy = cluster.ledger.record.call_async(blocker, seconds=3)
    wait_for(lambda: Ledger.count(blocker), 30, "the slow handler to start")
    queued = cluster.ledger.remaining.with_options(timeout=20)()
    busy.result()
    # It waited behind most of the 3 s handler, and its context says so.
    assert 0 < queued < 18.5
