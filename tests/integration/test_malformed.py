"""Messages no worker can read, in a real `rpc run` daemon: never a dead or deaf worker.

Each is written frame by frame (tests/fuzz/frames.py), since no client library would
send them: py-amqp, for one, could not even read them back.
"""

from __future__ import annotations

import base64
import subprocess
import time

from rpc import ClusterProxy, protocol
from rpc.transport import link as link_module
from tests.fuzz.harness import RawPublisher, Stats
from tests.fuzz.strategies import SERVICE, Message
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command

TIMEOUT = 30.0

#: A cast whose headers nest 5,000 tables deep: py-amqp's decoder raised on it.
NESTED = Message(
    exchange=b"",
    routing_key=protocol.service_queue(SERVICE).encode(),
    properties={
        "headers": [
            (protocol.HEADER_METHOD.encode(), ("S", b"sink")),
            (b"deep", ("deep", ("F", 5000, ("I", 1)))),
        ],
        "delivery_mode": 2,
    },
    body=b'{"args": [], "kwargs": {}}',
)
#: Casts py-amqp could not read either, which we read and run.
READABLE = [
    Message(
        exchange=b"",
        routing_key=protocol.service_queue(SERVICE).encode(),
        properties={
            "headers": [(protocol.HEADER_METHOD.encode(), ("S", b"sink"))],
            "content_type": b"application/json",
            **odd,
        },
        body=b'{"args": [], "kwargs": {}}',
    )
    for odd in (
        {"timestamp": 2**64 - 1},
        {"correlation_id": b"\xff\xfe\x00raw"},
    )
]


def serving_worker(broker_url: str, target: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        rpc_command("run", target),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def log_of(worker: subprocess.Popen[bytes]) -> str:
    """What ``worker`` logged, once it has stopped (SIGTERM if it still runs)."""
    if worker.poll() is None:
        worker.terminate()
    try:
        _, err = worker.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, err = worker.communicate(timeout=TIMEOUT)
    return err.decode(errors="replace")


def call_when_up(cluster: ClusterProxy, service: str) -> object:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return getattr(cluster, service).echo("up")
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_poison_message_at_the_head_of_the_queue_does_not_stop_a_starting_worker(
    broker_url,
):
    publisher = RawPublisher(broker_url, Stats())
    queue = protocol.service_queue(SERVICE)
    dead_letters = protocol.dead_letter_queue(SERVICE)
    try:
        # As a worker declares them, before any worker ever ran.
        publisher.channel.queue_declare(queue, durable=True, auto_delete=False)
        for message in (NESTED, *READABLE):
            publisher.publish(message)
        # The queue counts what its channel routed a moment later, not at once.
        deadline = time.monotonic() + TIMEOUT
        while publisher.depth(queue)[0] < 3:
            assert time.monotonic() < deadline, "the three messages never queued"
            time.sleep(0.05)
        assert publisher.depth(queue)[0] == 3
        worker = serving_worker(broker_url, "tests.fuzz.target:Fuzzed")
        cluster = ClusterProxy(broker_url, timeout=5)
        try:
            assert call_when_up(cluster, SERVICE) == "up"
            deadline = time.monotonic() + TIMEOUT
            while publisher.depth(queue)[0] or not publisher.depth(dead_letters)[0]:
                assert time.monotonic() < deadline, "the queue did not drain"
                time.sleep(0.05)
            letter = publisher.channel.basic_get(dead_letters, no_ack=True)
            assert letter is not None
            assert publisher.depth(dead_letters)[0] == 0  # the readable ones ran
            assert worker.poll() is None
        finally:
            cluster.stop()
            log = log_of(worker)
    finally:
        publisher.close()
    headers = letter.headers
    assert headers[protocol.HEADER_DEATH_REASON] == "malformed"
    assert "nested deeper" in headers[protocol.HEADER_DEATH_DETAIL]
    assert headers[protocol.HEADER_ORIGIN_QUEUE] == queue
    raw = base64.b64decode(headers[protocol.HEADER_RAW_PROPERTIES])
    assert b"deep" in raw and raw.count(b"F") > 5000
    assert bytes(letter.body) == NESTED.body
    assert "Exception in thread" not in log and "Traceback" not in log, log


def test_a_worker_whose_reader_dies_exits_rather_than_stay_deaf(broker_url):
    worker = serving_worker(broker_url, "tests.integration.fault_services:DeafWorker")
    cluster = ClusterProxy(broker_url, timeout=5)
    try:
        assert call_when_up(cluster, "deaf") == "up"
        cluster.deaf.break_reader.cast()
        assert worker.wait(timeout=TIMEOUT) == link_module.READER_DIED_EXIT
    finally:
        cluster.stop()
        log = log_of(worker)
    assert "the thread reading the broker connection died" in log, log
