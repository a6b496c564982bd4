"""Poison messages end in the service's dead-letter queue, not in a crash loop."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orjson
import pytest
from kombu import Connection

from rpc import ClusterProxy, Config, MethodNotFoundError, protocol
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.integration.test_supervisor import children_of, rpc_run, wait_for

DIE_TIMEOUT = 120  # the call's deadline must outlast the restarts


def dead_letters(broker_url: str, service: str) -> list[tuple[bytes, dict]]:
    """Take every message out of ``service``'s dead-letter queue."""
    found = []
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        while True:
            message = channel.basic_get(
                protocol.dead_letter_queue(service), no_ack=True
            )
            if message is None:
                return found
            body = message.body
            found.append(
                (
                    body.encode() if isinstance(body, str) else body,
                    {**(message.headers or {})},
                )
            )


def poll_dead_letters(broker_url: str, service: str, count: int) -> list:
    found: list = []

    def enough() -> bool:
        found.extend(dead_letters(broker_url, service))
        return len(found) >= count

    wait_for(f"{count} dead letters", enough, 120)
    return found


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def queue_info(broker_url: str, *columns: str) -> dict[str, list[str]]:
    """``rabbitmqctl list_queues`` of the test's vhost: name -> the columns asked."""
    columns = columns or ("type", "messages")
    vhost = unquote(urlsplit(broker_url).path[1:]) or "/"
    output = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", *columns],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split() for line in output.splitlines() if line.strip()]
    return {row[0]: row[1:] for row in rows if row[0].startswith("rpc-")}


@pytest.fixture
def cluster(broker_url):
    with ClusterProxy(config=Config(broker_url=broker_url, default_timeout=90)) as c:
        yield c


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_handler_that_kills_its_worker_is_dead_lettered_after_the_limit(
    broker_url, cluster, tmp_path, queue_type
):
    log = tmp_path / "run.log"
    marker = tmp_path / "deaths"
    # Counted requeues (classic queues) with unconfirmed copies: the copy and the
    # original's ack leave in one write, so each death costs exactly one delivery.
    # With confirmed copies a death inside the confirm window can run the poison
    # more often (docs/cluster-faults.md).
    env = {
        "RPC_DELIVERY_LIMIT": "3",
        "RPC_QUEUE_TYPE": queue_type,
        "RPC_COPIES": "unconfirmed",
    }
    with rpc_run(broker_url, log, "--processes", "1", **env) as run:
        wait_for("the worker", lambda: "is consuming" in log.read_text())
        poison = cluster.faulty.die.with_options(timeout=DIE_TIMEOUT)
        poison.call_async(str(marker))
        found = poll_dead_letters(broker_url, "faulty", 1)
        # The service recovered: it answers, and the poison is gone from its queue.
        assert cluster.faulty.whoami() in {child.pid for child in children_of(run)}
        info = queue_info(broker_url)
    assert len(lines(marker)) == 3  # ran exactly delivery_limit times
    assert len(set(lines(marker))) == 3  # in three different processes
    (body, headers), *rest = found
    assert rest == []
    assert orjson.loads(body) == {"args": [str(marker)], "kwargs": {}}
    assert headers[protocol.HEADER_METHOD] == "die"
    if queue_type == "classic":
        assert headers[protocol.HEADER_DEATH_REASON] == "delivery-limit"
    else:
        assert headers[protocol.HEADER_FIRST_DEATH_REASON] == "delivery_limit"
    assert info["rpc-faulty"] == [queue_type, "0"]
    assert info["rpc-faulty.dead-letter"][0] == queue_type


def publish_raw(broker_url: str, body: bytes, method: str, **properties) -> None:
    with Connection(broker_url) as connection:
        producer = connection.Producer()
        producer.publish(
            body,
            exchange=protocol.RPC_EXCHANGE,
            routing_key=protocol.routing_key("faulty", method),
            content_type=properties.pop("content_type", "application/json"),
            content_encoding="utf-8",
            headers={protocol.HEADER_METHOD: method},
            **properties,
        )


def test_casts_that_cannot_be_served_are_dead_lettered_with_a_reason(
    broker_url, cluster, tmp_path
):
    log = tmp_path / "run.log"
    marker = tmp_path / "casts"
    with rpc_run(broker_url, log) as _run:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        publish_raw(broker_url, b"{not json", "record")
        publish_raw(broker_url, b"\x80\x81", "record", content_type="text/plain")
        publish_raw(broker_url, b'{"args": [], "kwargs": {}}', "no_such_method")
        publish_raw(broker_url, b'{"args": [1, 2, 3, 4], "kwargs": {}}', "record")
        good = b'{"args": [], "kwargs": {"marker": "%s", "value": 42}}' % (
            str(marker).encode()
        )
        publish_raw(broker_url, good, "record")
        found = poll_dead_letters(broker_url, "faulty", 4)
        wait_for("the good cast", lambda: lines(marker) == ["42"])
        assert cluster.faulty.whoami() == _run.pid
    reasons = sorted(headers[protocol.HEADER_DEATH_REASON] for _, headers in found)
    assert reasons == [
        "invalid-arguments",
        "malformed",
        "malformed",
        "method-not-found",
    ]
    bodies = {body for body, _ in found}
    assert b"{not json" in bodies
    assert b"\x80\x81" in bodies
    assert all(headers[protocol.HEADER_DEATH_DETAIL] for _, headers in found)


def test_a_malformed_call_gets_an_error_reply_and_is_not_dead_lettered(
    broker_url, cluster, tmp_path
):
    log = tmp_path / "run.log"
    with rpc_run(broker_url, log) as run:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        with pytest.raises(MethodNotFoundError):
            cluster.faulty.no_such_method()
        assert cluster.faulty.whoami() == run.pid
    assert dead_letters(broker_url, "faulty") == []


def test_a_round_trip_on_a_quorum_queue(broker_url, cluster, tmp_path):
    log = tmp_path / "run.log"
    marker = tmp_path / "pid"
    with rpc_run(broker_url, log, RPC_QUEUE_TYPE="quorum") as run:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        answer = cluster.faulty.hold(str(marker), 0.0)
        info = queue_info(broker_url)
    assert answer == {"pid": run.pid, "redelivered": False, "delivery_count": 1}
    assert info["rpc-faulty"][0] == "quorum"


def rpc_dead_letters(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rpc_command("dead-letters", "faulty", *args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rpc_dead_letters_lists_them_and_requeues_them_once_fixed(broker_url, tmp_path):
    log = tmp_path / "run.log"
    marker = tmp_path / "casts"
    with rpc_run(broker_url, log) as _run:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        publish_raw(broker_url, b"{not json", "record")
        wait_for(
            "the dead letter",
            lambda: queue_info(broker_url)["rpc-faulty.dead-letter"][1] == "1",
        )
        # A poison message whose cause was fixed since (it now runs fine).
        good = orjson.dumps({"kwargs": {"marker": str(marker), "value": 7}})
        with Connection(broker_url) as connection:
            connection.Producer().publish(
                good,
                exchange=protocol.DEAD_LETTER_EXCHANGE,
                routing_key=protocol.service_queue("faulty"),
                content_type="application/json",
                content_encoding="utf-8",
                headers={
                    protocol.HEADER_METHOD: "record",
                    protocol.HEADER_DELIVERY_COUNT: 5,
                    protocol.HEADER_DEATH_REASON: "delivery-limit",
                },
            )
        listed = rpc_dead_letters(broker_url, "--json")
        listed_again = rpc_dead_letters(broker_url)
        requeued = rpc_dead_letters(broker_url, "--requeue")
        wait_for("the requeued cast", lambda: lines(marker) == ["7"])
        # The malformed one failed again and is back; the fixed one is gone.
        found = poll_dead_letters(broker_url, "faulty", 1)
    assert listed.returncode == 0, listed.stderr
    entries = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["reason"], e["method"]) for e in entries] == [
        ("malformed", "record"),
        ("delivery-limit", "record"),
    ]
    assert entries[0]["body"] == "{not json"
    assert "not valid JSON" in entries[0]["detail"]
    assert "2 message(s) in the dead-letter queue" in listed_again.stderr
    assert "2 message(s) requeued" in requeued.stderr
    assert [body for body, _ in found] == [b"{not json"]
