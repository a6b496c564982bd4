"""The failure policy's copies: confirmed before the original is acknowledged, and
what happens to the original when the broker does not take one."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from rpc import Config, deadletter, protocol
from rpc.errors import BrokerError
from rpc.protocol import Request
from rpc.transport import Delivery, QueueRefusedError
from rpc.worker import failures as failures_module
from rpc.worker.consumers import RpcQueueConsumer
from rpc.worker.failures import FailurePolicy
from rpc.worker.retry_queues import RetryQueues

ORIGIN = protocol.service_queue("greeter")


class Broker:
    """The worker's connection, answering each confirmed copy as told."""

    def __init__(self) -> None:
        #: (what, routing key, mandatory) in the order the policy did them.
        self.log: list[tuple[str, str, bool]] = []
        self.declared: list[str] = []
        #: Per routing key: True (taken), False (unroutable) or an exception.
        self.answers: dict[str, Any] = {}
        self.refuse_declares = False
        self.generation = 1

    def declare_queue(self, queue: str, *, arguments: dict[str, Any]) -> None:
        self.declared.append(queue)
        if self.refuse_declares:
            raise QueueRefusedError(
                f"queue {queue} refused: NOT_FOUND - home node 'rabbit@n3' is down"
            )

    def publish_confirmed(
        self, body: bytes, *, routing_key: str, mandatory: bool = False, **publish
    ) -> Future[bool]:
        self.log.append(("copy", routing_key, mandatory))
        future: Future[bool] = Future()
        answer = self.answers.get(routing_key, True)
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)
        return future

    def publish_and_ack(self, delivery: Delivery, body: bytes, **publish) -> None:
        self.log.append(("copy-and-ack", publish["routing_key"], False))

    def read_until(self, done, timeout: float) -> bool:
        return bool(done())

    def ack(self, delivery: Delivery) -> None:
        self.log.append(("ack", "", False))

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        self.log.append(("reject-requeue" if requeue else "reject", "", False))


def cast(count: int = 1, *, redelivered: bool = False) -> Delivery:
    headers = {protocol.HEADER_METHOD: "hello", protocol.HEADER_DELIVERY_COUNT: count}
    return Delivery(
        body=b'{"args": ["ada"], "kwargs": {}}',
        content_type="application/json",
        headers=headers,
        correlation_id=None,
        reply_to=None,
        delivery_tag=1,
        redelivered=redelivered,
        routing_key="greeter.hello",
        exchange="rpc",
        consumer_tag="ctag",
        generation=1,
        properties={"application_headers": headers, "message_id": "m1"},
    )


def request(count: int = 1) -> Request:
    return Request(
        service="greeter",
        method="hello",
        args=["ada"],
        kwargs={},
        correlation_id=None,
        reply_to=None,
        deadline=None,
        caller="client",
        delivery_count=count,
    )


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(failures_module, "GIVE_BACK_PAUSE", 0)


def policy(broker: Broker, **settings: Any) -> SimpleNamespace:
    config = Config(broker_url="amqp://localhost//", **settings)
    retry_queues = RetryQueues(broker, queue_type=config.queue_type)  # type: ignore[arg-type]
    failures = FailurePolicy(
        broker,  # type: ignore[arg-type]
        config,
        retry_queues,
        delays_retries=True,
    )
    origin = RpcQueueConsumer(SimpleNamespace(config=config), "greeter")  # type: ignore[arg-type]
    return SimpleNamespace(failures=failures, origin=origin)


def fail(setup: SimpleNamespace, count: int = 1) -> None:
    setup.failures.handler_failed(
        setup.origin, cast(count), request(count), RuntimeError("database down")
    )


def test_a_retry_copy_is_confirmed_and_mandatory_before_the_original_is_acked():
    broker = Broker()
    fail(policy(broker))
    retry_queue = protocol.retry_queue(ORIGIN, 1000)
    assert broker.declared == [retry_queue]
    assert broker.log == [("copy", retry_queue, True), ("ack", "", False)]


def test_a_refused_retry_copy_goes_straight_back_to_its_queue():
    broker = Broker()
    retry_queue = protocol.retry_queue(ORIGIN, 1000)
    broker.answers[retry_queue] = BrokerError("the broker refused the message (nack)")
    setup = policy(broker)
    fail(setup)
    assert broker.log == [
        ("copy", retry_queue, True),
        ("copy", ORIGIN, True),
        ("ack", "", False),
    ]
    # Not trusted for the next copy: declared again, where a dead home node is
    # refused at once, rather than copied to for as long as the cache would last.
    fail(setup)
    assert broker.declared == [retry_queue, retry_queue]


def test_an_unroutable_retry_copy_goes_straight_back_to_its_queue():
    broker = Broker()
    broker.answers[protocol.retry_queue(ORIGIN, 1000)] = False
    fail(policy(broker))
    assert broker.log[1:] == [("copy", ORIGIN, True), ("ack", "", False)]


def test_a_retry_queue_refused_by_the_broker_fails_that_message_only():
    broker = Broker()
    broker.refuse_declares = True
    fail(policy(broker))  # no BrokerError: the connection is not torn down
    assert broker.log == [("copy", ORIGIN, True), ("ack", "", False)]


def test_an_original_whose_copy_was_not_taken_is_given_back_not_acked():
    broker = Broker()
    broker.answers[ORIGIN] = BrokerError("not confirmed within 10s")
    setup = policy(broker, retry_delay=0)
    fail(setup)
    assert broker.log == [("copy", ORIGIN, True), ("reject-requeue", "", False)]


def test_a_dead_letter_not_taken_leaves_the_original_in_its_queue():
    broker = Broker()
    broker.answers[ORIGIN] = False  # the dead-letter queue's binding is gone
    setup = policy(broker)
    limit = setup.failures._config.delivery_limit
    fail(setup, count=limit)
    assert broker.log == [("copy", ORIGIN, True), ("reject-requeue", "", False)]


def test_a_counted_requeue_is_confirmed_too():
    broker = Broker()
    setup = policy(broker)
    again = cast(redelivered=True)
    assert setup.failures.count(setup.origin, again, queue_type="classic") is None
    assert broker.log == [("copy", ORIGIN, True), ("ack", "", False)]


def test_unconfirmed_copies_leave_with_their_ack_in_one_write():
    broker = Broker()
    fail(policy(broker, copies="unconfirmed"))
    assert broker.log == [("copy-and-ack", protocol.retry_queue(ORIGIN, 1000), False)]


def test_retry_queues_are_quorum_queues_with_quorum_queue_type():
    arguments = protocol.retry_queue_arguments(ORIGIN, 2000, "quorum")
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-message-ttl"] == 2000
    assert arguments["x-dead-letter-routing-key"] == ORIGIN
    # A copy leaves only once its queue took it back.
    assert arguments["x-dead-letter-strategy"] == "at-least-once"
    assert arguments["x-overflow"] == "reject-publish"
    assert "x-dead-letter-strategy" not in protocol.retry_queue_arguments(ORIGIN, 2000)


def test_the_dead_letter_reason_of_a_failed_last_run_is_kept():
    broker = Broker()
    seen: list[dict[str, Any]] = []
    original = broker.publish_confirmed

    def publish_confirmed(body, **publish):
        seen.append(publish["headers"])
        return original(body, **publish)

    broker.publish_confirmed = publish_confirmed  # type: ignore[method-assign]
    setup = policy(broker)
    fail(setup, count=setup.failures._config.delivery_limit)
    assert seen[0][protocol.HEADER_DEATH_REASON] == deadletter.REASON_HANDLER_ERROR
