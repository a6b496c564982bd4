"""A failed event or cast waits in a retry queue before it runs again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from unittest.mock import ANY

import kombu
import pytest
from amqp.exceptions import NotFound

from rpc import Config, event_handler, protocol
from rpc.testing import ServiceCluster
from tests.behaviour import BROKEN, Jobs, Run, Runs, _take, take_dead_letters, unique

#: Seconds the handler's dependency stays down: longer than one retry delay, and
#: shorter than the two waits of three runs (1 s, then 2 s).
OUTAGE = 1.5
LIMIT = 3


class Ledger:
    """An event handler that fails while its event's value is broken."""

    name = "ledger"

    @event_handler("tests", "entry.posted")
    def on_entry(self, value: str) -> None:
        _take(value, 0)


@pytest.fixture(params=["classic", "quorum"])
def cluster(request, rpc_config: Config) -> Iterator[ServiceCluster]:
    config = rpc_config.replace(queue_type=request.param)
    with ServiceCluster(config=config) as c:
        yield c


def depth(broker_url: str, queue: str) -> int | None:
    """Messages ready in ``queue`` now, or None when there is no such queue."""
    with kombu.Connection(broker_url) as connection:
        try:
            declared = connection.default_channel.queue_declare(queue, passive=True)
        except NotFound:
            return None
        return int(declared[1])


def wait_depth(broker_url: str, queue: str, count: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while depth(broker_url, queue) != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def outage(value: str, runs: Runs) -> threading.Timer:
    """Fix the broken ``value`` :data:`OUTAGE` seconds after its first run."""
    runs.wait(value, 1)
    fix = threading.Timer(OUTAGE, BROKEN.discard, [value])
    fix.start()
    return fix


@pytest.mark.parametrize(
    ("service", "publish"),
    [
        (Jobs, lambda proxy, value: proxy.jobs.take.cast(value)),
        (Ledger, lambda proxy, value: proxy.dispatch("tests", "entry.posted", value)),
    ],
    ids=["cast", "event"],
)
def test_a_message_outlives_an_outage_shorter_than_its_retry_delays(
    cluster, service, publish
):
    runs = Runs()
    runs.watch(cluster.start(service, delivery_limit=LIMIT, retry_delay=1.0))
    value = unique("outage")
    BROKEN.add(value)
    try:
        publish(cluster.proxy, value)
        fix = outage(value, runs)
        seen = runs.wait(value, LIMIT)
        fix.join(timeout=10)
    finally:
        BROKEN.discard(value)
    # Immediate retries would have spent all three runs during the outage.
    assert [(run.delivery_count, run.succeeded) for run in seen] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    assert take_dead_letters(cluster.broker_url, service.name, 1, timeout=0) == []


def test_the_copy_waits_in_a_retry_queue_then_comes_back_by_itself(cluster):
    runs = Runs()
    runs.watch(cluster.start(Jobs, delivery_limit=LIMIT, retry_delay=2.0))
    retry_queue = protocol.retry_queue(protocol.service_queue("jobs"), 2000)
    value = unique("once")
    cluster.proxy.jobs.take.cast(value, failures=1)
    assert wait_depth(cluster.broker_url, retry_queue, 1)
    assert runs.wait(value, 2) == [
        Run(1, False, ANY, False),
        Run(2, True, ANY, True),
    ]
    assert depth(cluster.broker_url, retry_queue) == 0
    assert depth(cluster.broker_url, protocol.service_queue("jobs")) == 0
    assert take_dead_letters(cluster.broker_url, "jobs", 1, timeout=0) == []
