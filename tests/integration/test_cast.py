"""Casts: requests without reply, confirmed by the broker, run by one worker."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import kombu
import pytest

from rpc import UnknownServiceError, protocol
from tests.integration import topology_fixtures as fixtures
from tests.integration.daemons import PROJECT_ROOT, project_env
from tests.integration.topology_services import Forwarder, Sink

# Shared fixtures: a config on the test's vhost, runners, a recorder, a client.
config, record = fixtures.config, fixtures.record
runners, cluster = fixtures.runners, fixtures.cluster


def test_each_cast_runs_exactly_once_across_workers(runners, cluster, record):
    runners.start(Sink)
    runners.start(Sink)
    for i in range(60):
        cluster.sink.slow_put.cast(i, 0.01)
    seen = record.wait_for("put", 60)
    assert sorted(value for _, value in seen) == list(range(60))
    assert len(record.per_worker("put")) == 2  # both workers shared the work


def test_cast_returns_none_and_the_handler_runs(runners, cluster, record):
    runners.start(Sink)
    assert cluster.sink.put.cast({"text": "héllo"}) is None
    assert record.wait_for("put", 1)[0][1] == {"text": "héllo"}


def test_cast_to_an_unknown_service_raises(cluster):
    with pytest.raises(UnknownServiceError, match="nobody"):
        cluster.nobody.anything.cast(1)
    # The proxy is still usable afterwards.
    with pytest.raises(UnknownServiceError):
        cluster.nobody.anything.cast(2)


def test_casts_wait_persistently_while_no_worker_runs(
    runners, cluster, record, broker_url
):
    runners.start(Sink)
    runners.stop_all()  # the durable queue stays; nobody consumes it
    for i in range(5):
        cluster.sink.put.cast(i)  # confirmed: the broker holds them
    with kombu.Connection(broker_url) as connection:
        channel = connection.channel()
        message = channel.basic_get(protocol.service_queue("sink"), no_ack=False)
        assert message is not None
        assert message.properties["delivery_mode"] == 2  # persistent
        assert protocol.HEADER_DEADLINE not in message.headers
        channel.basic_reject(message.delivery_tag, requeue=True)
        channel.close()
    runners.start(Sink)
    seen = record.wait_for("put", 5)
    assert sorted(value for _, value in seen) == list(range(5))


def test_a_service_casts_to_another(runners, cluster, record):
    runners.start(Sink, Forwarder)
    assert cluster.forwarder.forward("via forwarder") == "cast"
    assert record.wait_for("put", 1)[0][1] == "via forwarder"


def test_many_threads_cast_concurrently_on_one_proxy(runners, cluster, record):
    runners.start(Sink, max_workers=8)

    def cast_some(thread: int) -> None:
        for i in range(25):
            cluster.sink.put.cast([thread, i])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(cast_some, range(8)))
    seen = record.wait_for("put", 200)
    assert sorted(tuple(value) for _, value in seen) == [
        (t, i) for t in range(8) for i in range(25)
    ]


def test_a_failing_cast_handler_does_not_stop_the_worker(runners, cluster, record):
    runners.start(Sink)
    cluster.sink.fail.cast("boom")
    cluster.sink.put.cast("after")
    assert record.wait_for("put", 1)[0][1] == "after"


def test_rpc_cast_from_the_shell(runners, record, broker_url):
    runners.start(Sink)
    command = [sys.executable, "-m", "rpc", "cast", "sink.put", '["from the shell"]']
    done = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert record.wait_for("put", 1)[0][1] == "from the shell"
    unknown = subprocess.run(
        [sys.executable, "-m", "rpc", "cast", "nobody.put", "[1]"],
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        timeout=60,
    )
    assert unknown.returncode == 1
    assert b"UnknownServiceError" in unknown.stderr
