"""Casts whose handler raises are run again, then kept in the dead-letter queue."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import kombu
import orjson
import pytest

from rpc import ClusterProxy, Config, protocol
from rpc.testing import ServiceCluster
from tests.behaviour import (
    BROKEN,
    FailingCastBehaviour,
    Jobs,
    Runs,
    ShardedJobs,
    unique,
)
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.integration.test_poison import dead_letters, poll_dead_letters, queue_info
from tests.integration.test_poison_events import event, runs, values
from tests.integration.test_supervisor import consuming, rpc_run, wait_for

QUEUE_TYPES = ["classic", "quorum"]


class TestFailingCastsOnRabbitMQ(FailingCastBehaviour):
    @pytest.fixture(params=QUEUE_TYPES)
    def cluster(self, request, rpc_config: Config) -> Iterator[ServiceCluster]:
        with ServiceCluster(config=rpc_config.replace(queue_type=request.param)) as c:
            yield c


def rpc_dead_letters(
    broker_url: str, service: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rpc_command("dead-letters", service, *args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def ready(broker_url: str, queue: str) -> int:
    """Messages ready in ``queue`` now (rabbitmqctl's count of a quorum queue lags)."""
    with kombu.Connection(broker_url) as connection:
        return int(connection.default_channel.queue_declare(queue, passive=True)[1])


def waiting(broker_url: str, queue: str, count: int) -> Callable[[], bool]:
    """True once ``queue`` holds ``count`` messages."""
    return lambda: ready(broker_url, queue) == count


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_rpc_dead_letters_replays_a_failed_cast_once_its_cause_is_fixed(
    broker_url, rpc_config, queue_type
):
    dead_letter_queue = protocol.dead_letter_queue("jobs")
    value = unique("broken")
    BROKEN.add(value)
    with ServiceCluster(config=rpc_config.replace(queue_type=queue_type)) as cluster:
        watched = Runs()
        watched.watch(cluster.start(Jobs, delivery_limit=2))
        try:
            cluster.proxy.jobs.take.cast(value)
            wait_for("the dead letter", waiting(broker_url, dead_letter_queue, 1))
            listed = rpc_dead_letters(broker_url, "jobs", "--json")
        finally:
            BROKEN.discard(value)  # the cause is fixed
        requeued = rpc_dead_letters(broker_url, "jobs", "--requeue")
        seen = watched.wait(value, 3)
        info = queue_info(broker_url)
        left = ready(broker_url, protocol.service_queue("jobs"))
    assert left == 0
    assert listed.returncode == 0, listed.stderr
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["reason"] == "handler-error"
    assert entry["detail"] == f"ValueError: cannot take {value}"
    assert entry["method"] == "take"
    assert entry["queue"] == protocol.service_queue("jobs")
    assert orjson.loads(entry["body"]) == {"args": [value], "kwargs": {}}
    assert requeued.returncode == 0, requeued.stderr
    assert "1 message(s) requeued" in requeued.stderr
    # Two runs that failed, then the replay: a fresh message, counted from one.
    assert [(run.delivery_count, run.succeeded) for run in seen] == [
        (1, False),
        (2, False),
        (1, True),
    ]
    assert info[dead_letter_queue][0] == queue_type
    assert info[protocol.service_queue("jobs")][0] == queue_type
    assert dead_letters(broker_url, "jobs") == []


def test_a_replayed_sharded_cast_goes_to_the_owner_of_its_key(broker_url, rpc_config):
    values = [unique(f"broken{n}") for n in range(8)]
    BROKEN.update(values)
    with ServiceCluster(config=rpc_config) as cluster:
        watched = Runs()
        for _ in range(2):
            watched.watch(cluster.start(ShardedJobs, delivery_limit=2))
        try:
            for value in values:
                cluster.proxy.sharded_jobs.take.cast(value)
            wait_for(
                "the dead letters",
                waiting(broker_url, protocol.dead_letter_queue("sharded_jobs"), 8),
            )
        finally:
            BROKEN.difference_update(values)
        requeued = rpc_dead_letters(broker_url, "sharded_jobs", "--requeue")
        seen = {value: watched.wait(value, 3) for value in values}
    assert requeued.returncode == 0, requeued.stderr
    assert "8 message(s) requeued" in requeued.stderr
    for value, runs_of_value in seen.items():
        assert [run.succeeded for run in runs_of_value] == [False, False, True]
        # Its owner ran it every time, the replay too.
        assert len({run.worker for run in runs_of_value}) == 1, (value, seen)
    assert len({runs_of_value[0].worker for runs_of_value in seen.values()}) == 2


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_a_cast_that_raised_then_killed_its_workers_counts_every_delivery(
    broker_url, tmp_path, queue_type
):
    log = tmp_path / "run.log"
    marker = tmp_path / "runs"
    env = {
        "RPC_DELIVERY_LIMIT": "3",
        "RPC_QUEUE_TYPE": queue_type,
        # One cast in flight per worker: the healthy ones are never in the process
        # the poison kills.
        "RPC_MAX_WORKERS": "1",
    }
    config = Config(broker_url=broker_url, default_timeout=30)
    with (
        rpc_run(broker_url, log, "--processes", "1", **env),
        ClusterProxy(config=config) as cluster,
    ):
        wait_for("the worker", consuming(log, 1))
        cluster.faulty.act.cast(event(marker, "poison", "raise-then-die"))
        healthy = [f"healthy-{n}" for n in range(5)]
        for value in healthy:
            cluster.faulty.act.cast(event(marker, value))
        found = poll_dead_letters(broker_url, "faulty", 1)
        wait_for("the healthy casts", lambda: set(healthy) <= set(values(marker)))
        info = queue_info(broker_url)
    (body, headers), *rest = found
    assert rest == []
    poison_runs = [pid for pid, value in runs(marker) if value == "poison"]
    # One run that raised and two that killed their worker: delivery_limit runs.
    assert len(poison_runs) == 3
    assert len(set(poison_runs)) == 2
    assert sorted(values(marker)) == sorted(["poison"] * 3 + healthy)
    assert orjson.loads(body)["args"][0]["value"] == "poison"
    assert headers[protocol.HEADER_DEATH_REASON] == "delivery-limit"
    assert headers[protocol.HEADER_METHOD] == "act"
    assert info["rpc-faulty"] == [queue_type, "0"]
    assert dead_letters(broker_url, "faulty") == []
