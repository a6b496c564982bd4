"""Round trips, errors, deadlines and bad messages against the real RabbitMQ."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import kombu
import pytest

from rpc import (
    CallTimeoutError,
    ClusterProxy,
    Config,
    InvalidArgumentsError,
    MalformedRequestError,
    MethodNotFoundError,
    PayloadTooLargeError,
    RemoteError,
    ServiceRunner,
    UnknownServiceError,
)
from tests.integration import fixtures
from tests.integration.sample_services import Echo, Relay


@pytest.fixture
def config(broker_url: str) -> Config:
    return Config(broker_url=broker_url, default_timeout=10, max_workers=4)


@pytest.fixture
def services(config: Config) -> Iterator[ServiceRunner]:
    runner = ServiceRunner([Echo, Relay], config)
    runner.start()
    yield runner
    runner.stop()


# Shared fixture: a client on this module's config.
cluster = fixtures.cluster


def test_round_trip_keeps_json_values(services, cluster):
    value = {"text": "héllo", "n": 3, "f": 1.5, "list": [1, None, True], "nested": {}}
    assert cluster.echo.echo(value) == value
    assert cluster.echo.echo(value=[1, 2]) == [1, 2]


def test_service_calls_another_service(services, cluster):
    assert cluster.relay.relay("through") == "through"


def test_remote_exception_carries_type_message_and_traceback(services, cluster):
    with pytest.raises(RemoteError) as caught:
        cluster.echo.fail("boom")
    error = caught.value
    assert error.exc_type == "ValueError"
    assert error.message == "boom"
    assert "raise ValueError(message)" in error.traceback
    assert error.service == "echo"


def test_unknown_method_gets_an_error_reply(services, cluster):
    with pytest.raises(MethodNotFoundError, match="no method 'missing'"):
        cluster.echo.missing()
    assert cluster.echo.echo(1) == 1  # the worker is still serving


def test_wrong_arguments_get_an_error_reply(services, cluster):
    with pytest.raises(InvalidArgumentsError, match="missing a required argument"):
        cluster.echo.echo()
    with pytest.raises(InvalidArgumentsError, match="unexpected keyword"):
        cluster.echo.echo(1, bogus=2)


def test_unknown_service_fails_at_once_not_after_the_timeout(cluster):
    started = time.monotonic()
    with pytest.raises(UnknownServiceError, match="nobody"):
        cluster.nobody.hello.with_options(timeout=20)()
    assert time.monotonic() - started < 5


def test_call_times_out_with_its_own_deadline(services, cluster):
    with pytest.raises(CallTimeoutError):
        cluster.echo.sleep.with_options(timeout=0.3)(2)
    # The proxy is still usable afterwards and the late reply is ignored.
    assert cluster.echo.echo("after") == "after"


def test_deadline_travels_with_nested_calls(services, cluster):
    here, there = cluster.relay.nested_remaining.with_options(timeout=4)()
    assert 0 < there <= here <= 4


def test_nested_call_cannot_outlive_its_caller(services, cluster):
    with pytest.raises(CallTimeoutError):
        # The relay's own proxy would wait 10 s; the caller's 1 s deadline wins.
        cluster.relay.relay_sleep.with_options(timeout=1)(3)
    deadline = time.monotonic() + 1.5
    while services.in_flight > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Only echo.sleep(3) is still running; the relay gave up with its caller.
    assert services.in_flight == 1


def test_call_async_and_many_threads_share_one_connection(services, cluster):
    futures = [cluster.echo.echo.call_async(i) for i in range(50)]
    assert [f.result() for f in futures] == list(range(50))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: cluster.echo.echo(i), range(200)))
    assert results == list(range(200))


def test_unencodable_result_becomes_an_error_reply(services, cluster):
    with pytest.raises(RemoteError, match="JSON"):
        cluster.echo.unencodable()


def test_oversized_payload_is_refused_before_publishing(broker_url, services):
    small = Config(broker_url=broker_url, max_message_bytes=2048)
    with ClusterProxy(config=small) as proxy, pytest.raises(PayloadTooLargeError):
        proxy.echo.echo("x" * 4096)


def test_malformed_messages_get_error_replies_and_are_not_redelivered(
    broker_url, services, cluster
):
    replies: list[dict] = []
    with kombu.Connection(broker_url) as connection:
        channel = connection.channel()
        reply_queue = kombu.Queue("test-replies", exclusive=True, channel=channel)
        reply_queue.declare()
        producer = kombu.Producer(channel)
        for body, content_type in [
            (b"{not json", "application/json"),
            (b'["a", "list"]', "application/json"),
            (b"\x80\x04\x95pickle", "application/x-python-serialize"),
        ]:
            producer.publish(
                body,
                exchange="",
                routing_key="rpc-echo",
                content_type=content_type,
                content_encoding="binary",
                reply_to="test-replies",
                correlation_id="bad",
            )
        with kombu.Consumer(
            channel,
            [reply_queue],
            callbacks=[lambda body, message: replies.append(body)],
            accept=["json"],
        ):
            deadline = time.monotonic() + 10
            while len(replies) < 3 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=1)
    assert len(replies) == 3
    for reply in replies:
        assert reply["error"]["type"] == MalformedRequestError.__name__
    assert cluster.echo.echo("still alive") == "still alive"
    # Nothing is left to be redelivered: the queue is empty once the worker is idle.
    # (The reply leaves just before the handler thread counts itself done.)
    assert services._dispatcher.wait_idle(10)
    with kombu.Connection(broker_url) as connection:
        _, count, _ = connection.channel().queue_declare("rpc-echo", passive=True)
    assert count == 0


def test_handlers_run_concurrently_up_to_max_workers(services, cluster):
    # max_workers is 4: four calls all run at once and meet. Run one by one, the
    # first would give up after 8 s having met only itself.
    group = uuid.uuid4().hex
    futures = [cluster.echo.meet.call_async(group, 4, 8) for _ in range(4)]
    assert [f.result() for f in futures] == [4, 4, 4, 4]


def test_request_body_is_plain_json_on_the_wire(broker_url, services):
    # A client in any language: publish JSON with the documented headers.
    with kombu.Connection(broker_url) as connection:
        channel = connection.channel()
        queue = kombu.Queue("test-raw-replies", exclusive=True, channel=channel)
        queue.declare()
        kombu.Producer(channel).publish(
            json.dumps({"args": [], "kwargs": {"value": "raw"}}).encode(),
            exchange="rpc",
            routing_key="echo.echo",
            content_type="application/json",
            content_encoding="utf-8",
            headers={"x-rpc-method": "echo"},
            reply_to="test-raw-replies",
            correlation_id="c-1",
        )
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = queue.get(no_ack=True)
            if message is None:
                time.sleep(0.05)
    assert message is not None
    assert message.properties["correlation_id"] == "c-1"
    assert json.loads(message.body) == {"result": "raw", "error": None}
