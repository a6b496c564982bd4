"""Poison events end in the service's dead-letter queue, not in a crash loop."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import orjson
import pytest

from rpc import ClusterProxy, Config, protocol
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.integration.test_poison import dead_letters, poll_dead_letters, queue_info
from tests.integration.test_supervisor import consuming, rpc_run, wait_for

EVENTS = "tests.integration.fault_services:FaultyEvents"
SERVICE = "faulty_events"


@pytest.fixture
def cluster(broker_url):
    with ClusterProxy(config=Config(broker_url=broker_url)) as c:
        yield c


def runs(marker: Path) -> list[tuple[int, str]]:
    """(pid, value) of every handler run the marker file recorded."""
    if not marker.exists():
        return []
    return [
        (int(pid), value)
        for pid, value in (line.split() for line in marker.read_text().splitlines())
    ]


def values(marker: Path) -> list[str]:
    return [value for _, value in runs(marker)]


def queue(kind: str) -> str:
    """The queue of FaultyEvents' handler of events of ``kind``."""
    handler_type = "service_pool" if kind == "pool" else kind
    return protocol.event_queue(SERVICE, f"on_{kind}", handler_type, "")


def event(marker: Path, value: str, do: str = "", **extra: str) -> dict[str, str]:
    return {"marker": str(marker), "value": value, "do": do, **extra}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_an_event_handler_that_kills_its_worker_is_dead_lettered_after_the_limit(
    broker_url, cluster, tmp_path, queue_type
):
    log = tmp_path / "run.log"
    marker = tmp_path / "runs"
    env = {
        "RPC_DELIVERY_LIMIT": "3",
        "RPC_QUEUE_TYPE": queue_type,
        # One event in flight per worker: the healthy ones are never in the
        # process the poison kills, so only the poison is counted.
        "RPC_MAX_WORKERS": "1",
    }
    with rpc_run(broker_url, log, EVENTS, "--processes", "1", **env):
        wait_for("the worker", consuming(log, 1))
        cluster.dispatch("tests", "pool.created", event(marker, "poison", "die"))
        healthy = [f"healthy-{n}" for n in range(5)]
        for value in healthy:
            cluster.dispatch("tests", "pool.created", event(marker, value))
        found = poll_dead_letters(broker_url, SERVICE, 1)
        wait_for("the healthy events", lambda: set(healthy) <= set(values(marker)))
        info = queue_info(broker_url)
    (body, headers), *rest = found
    assert rest == []
    poison_runs = [pid for pid, value in runs(marker) if value == "poison"]
    assert len(poison_runs) == 3  # exactly delivery_limit runs...
    assert len(set(poison_runs)) == 3  # ...each of which killed its worker
    assert sorted(values(marker)) == sorted(["poison"] * 3 + healthy)
    assert orjson.loads(body)["value"] == "poison"
    assert headers[protocol.HEADER_DEATH_REASON] == "delivery-limit"
    assert headers[protocol.HEADER_ORIGIN_QUEUE] == queue("pool")
    assert headers[protocol.HEADER_EVENT_SOURCE] == "tests"
    assert headers[protocol.HEADER_EVENT_TYPE] == "pool.created"
    assert info[queue("pool")] == [queue_type, "0"]
    assert info[protocol.dead_letter_queue(SERVICE)][0] == queue_type


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_an_event_handler_that_keeps_raising_runs_limit_times_then_dead_letters(
    broker_url, cluster, tmp_path, queue_type
):
    log = tmp_path / "run.log"
    marker = tmp_path / "runs"
    env = {"RPC_DELIVERY_LIMIT": "3", "RPC_QUEUE_TYPE": queue_type}
    with rpc_run(broker_url, log, EVENTS, **env) as run:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        for kind in ("pool", "singleton", "broadcast"):
            cluster.dispatch("tests", f"{kind}.x", event(marker, kind, "raise"))
        # A handler that fails once, then works (a database that was down a moment):
        # the event is delivered again, and handled.
        cluster.dispatch("tests", "pool.y", event(marker, "transient", "fail-once"))
        for n in range(3):
            cluster.dispatch("tests", "pool.z", event(marker, f"healthy-{n}"))
        found = poll_dead_letters(broker_url, SERVICE, 3)
        wait_for("the transient event", lambda: values(marker).count("transient") == 2)
        healthy = {f"healthy-{n}" for n in range(3)}
        wait_for("the healthy events", lambda: healthy <= set(values(marker)))
        info = queue_info(broker_url)
    assert len(found) == 3
    by_queue = {headers[protocol.HEADER_ORIGIN_QUEUE]: headers for _, headers in found}
    assert set(by_queue) == {
        queue("pool"),
        queue("singleton"),
        next(q for q in by_queue if q.startswith(queue("broadcast"))),
    }
    for kind in ("pool", "singleton", "broadcast"):
        assert values(marker).count(kind) == 3  # delivery_limit runs each
    for headers in by_queue.values():
        assert headers[protocol.HEADER_DEATH_REASON] == "handler-error"
        assert headers[protocol.HEADER_DEATH_DETAIL].startswith(
            "RuntimeError: cannot handle "
        )
        assert headers[protocol.HEADER_DELIVERY_COUNT] == 3
    assert {pid for pid, _ in runs(marker)} == {run.pid}  # the worker never died
    assert all(values(marker).count(value) == 1 for value in healthy)
    assert info[queue("pool")] == [queue_type, "0"]
    assert info[queue("singleton")] == [queue_type, "0"]


def test_a_broadcast_handler_that_kills_its_worker_costs_that_worker_one_restart(
    broker_url, cluster, tmp_path
):
    log = tmp_path / "run.log"
    marker = tmp_path / "runs"
    with rpc_run(broker_url, log, EVENTS, "--processes", "1"):
        wait_for("the worker", consuming(log, 1))
        cluster.dispatch("tests", "broadcast.x", event(marker, "poison", "die"))
        wait_for("the restarted worker", consuming(log, 2))
        cluster.dispatch("tests", "broadcast.x", event(marker, "healthy"))
        wait_for("the healthy event", lambda: "healthy" in values(marker))
        info = queue_info(broker_url)
    # The poison went with the dead worker's queue: it never came back.
    assert values(marker) == ["poison", "healthy"]
    assert dead_letters(broker_url, SERVICE) == []
    # One broadcast queue: the new worker's; the dead one's went with it.
    assert len([name for name in info if name.startswith(queue("broadcast"))]) == 1


def rpc_dead_letters(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rpc_command("dead-letters", SERVICE, *args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rpc_dead_letters_sends_events_back_to_their_handlers_queue(
    broker_url, cluster, tmp_path
):
    marker = tmp_path / "runs"
    switch = tmp_path / "broken"
    switch.touch()
    env = {"RPC_DELIVERY_LIMIT": "2"}
    first_log = tmp_path / "first.log"
    with rpc_run(broker_url, first_log, EVENTS, **env) as first:
        wait_for("the worker", lambda: "Ctrl+C stops" in first_log.read_text())
        for kind in ("pool", "broadcast"):
            broken = event(marker, kind, "raise-while", switch=str(switch))
            cluster.dispatch("tests", f"{kind}.x", broken)
        wait_for(
            "two dead letters",
            lambda: (
                queue_info(broker_url)[protocol.dead_letter_queue(SERVICE)][1] == "2"
            ),
        )
    listed = rpc_dead_letters(broker_url, "--json")
    switch.unlink()  # the cause is fixed
    log = tmp_path / "second.log"
    with rpc_run(broker_url, log, EVENTS, **env) as second:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        requeued = rpc_dead_letters(broker_url, "--requeue")
        wait_for("the requeued event", lambda: values(marker).count("pool") == 3)
        kept = dead_letters(broker_url, SERVICE)
    assert listed.returncode == 0, listed.stderr
    entries = sorted(
        (json.loads(line) for line in listed.stdout.splitlines()),
        key=lambda entry: entry["method"],
    )
    assert [(e["reason"], e["method"], e["event_type"]) for e in entries] == [
        ("handler-error", "on_broadcast", "broadcast.x"),
        ("handler-error", "on_pool", "pool.x"),
    ]
    assert entries[1]["queue"] == queue("pool")
    assert orjson.loads(entries[1]["body"])["value"] == "pool"
    # The pool event ran on the new worker; the broadcast one had no queue to go
    # back to (its worker is gone), so it stayed.
    assert [pid for pid, value in runs(marker) if value == "pool"][-1] == second.pid
    assert first.pid != second.pid
    assert requeued.returncode == 1
    assert "1 message(s) requeued" in requeued.stderr
    assert "1 message(s) kept" in requeued.stderr
    assert [orjson.loads(body)["value"] for body, _ in kept] == ["broadcast"]
