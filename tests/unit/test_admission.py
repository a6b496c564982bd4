"""What a worker does with a request it cannot run, before any handler: each kind of
bad input gets an error reply, a dead letter with its reason, or a rejection."""

from __future__ import annotations

import base64
import time
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from rpc import Config, deadletter, protocol
from rpc.errors import SerializationError
from rpc.service import ServiceDefinition
from rpc.transport import Delivery
from rpc.worker.admission import RequestAdmission
from rpc.worker.consumers import RpcQueueConsumer
from rpc.worker.failures import FailurePolicy
from rpc.worker.replies import ReplyPublisher
from rpc.worker.retry_queues import RetryQueues
from services.greeter import Greeter

REPLY_TO = "amq.rabbitmq.reply-to.caller"


class Recording:
    """The worker's connection, as admission and the failure policy use it."""

    def __init__(self, *, unencodable: int = 0) -> None:
        self.published: list[dict[str, Any]] = []
        self.acked: list[Delivery] = []
        self.rejected: list[tuple[Delivery, bool]] = []
        #: The next publishes that fail as a copy whose properties cannot be encoded.
        self.unencodable = unencodable

    def publish_and_ack(self, delivery: Delivery, body: bytes | None, **publish):
        if self.unencodable:
            self.unencodable -= 1
            raise SerializationError("message properties cannot be encoded: test")
        self.published.append({"body": body, **publish})
        self.acked.append(delivery)

    def publish_confirmed(self, body: bytes, *, mandatory: bool = False, **publish):
        """A confirmed copy, as the failure policy sends it by default."""
        if self.unencodable:
            self.unencodable -= 1
            raise SerializationError("message properties cannot be encoded: test")
        known = ("exchange", "routing_key", "content_type", "content_encoding")
        published = {name: publish.pop(name) for name in known if name in publish}
        published["headers"] = publish.pop("headers", None)
        self.published.append({"body": body, **published, "properties": publish})
        future: Future[bool] = Future()
        future.set_result(True)
        return future

    def read_until(self, done, timeout: float) -> bool:
        return bool(done())

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery)

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        self.rejected.append((delivery, requeue))


def delivery(
    body: bytes = b'{"args": ["ada"], "kwargs": {}}',
    *,
    headers: dict[str, Any] | None = None,
    reply_to: str | None = REPLY_TO,
    redelivered: bool = False,
    **properties: Any,
) -> Delivery:
    headers = {protocol.HEADER_METHOD: "hello", **(headers or {})}
    return Delivery(
        body=body,
        content_type=properties.pop("content_type", "application/json"),
        headers=headers,
        correlation_id="c1",
        reply_to=reply_to,
        delivery_tag=1,
        redelivered=redelivered,
        routing_key="greeter.hello",
        exchange="rpc",
        consumer_tag="ctag",
        generation=1,
        properties={"application_headers": headers, **properties},
    )


def malformed(reason: str = "headers nested deeper than 32 tables or arrays"):
    return Delivery(
        body=b"\x80raw body",
        content_type=None,
        headers={},
        correlation_id=None,
        reply_to=None,
        delivery_tag=2,
        redelivered=False,
        routing_key="greeter.hello",
        exchange="rpc",
        consumer_tag="ctag",
        generation=1,
        properties={},
        malformed=reason,
        raw_properties=b"\x00\x3c\x00\x00raw header",
    )


@pytest.fixture
def worker():
    config = Config(broker_url="memory://")
    connection = Recording()
    failures = FailurePolicy(
        connection,  # type: ignore[arg-type]
        config,
        RetryQueues(connection),  # type: ignore[arg-type]
        delays_retries=False,
    )
    replies = ReplyPublisher(connection, limit=config.max_message_bytes)  # type: ignore[arg-type]
    admission = RequestAdmission(connection, config, failures, replies)  # type: ignore[arg-type]
    origin = RpcQueueConsumer(SimpleNamespace(config=config), "greeter")  # type: ignore[arg-type]
    service = ServiceDefinition.from_class(Greeter)

    def admit(incoming: Delivery, method: str = "hello"):
        handler = service.rpc_handlers.get(method)
        return admission.admit(
            origin, incoming, service, handler, method, queue_type="classic"
        )

    return SimpleNamespace(
        connection=connection, failures=failures, origin=origin, admit=admit
    )


def error_of(published: dict[str, Any]) -> dict[str, str]:
    assert published["routing_key"] == REPLY_TO
    return orjson.loads(published["body"])["error"]


# -- deadlines ---------------------------------------------------------------------


@pytest.mark.parametrize("deadline", ["soon", True, False, float("nan"), [], {}])
def test_a_deadline_of_the_wrong_kind_gets_a_malformed_request_error(worker, deadline):
    incoming = delivery(headers={protocol.HEADER_DEADLINE: deadline})
    assert worker.admit(incoming) is None
    (reply,) = worker.connection.published
    error = error_of(reply)
    assert error["type"] == "MalformedRequestError"
    assert protocol.HEADER_DEADLINE in error["message"]


@pytest.mark.parametrize("deadline", ["soon", True, float("inf")])
def test_a_cast_with_a_deadline_of_the_wrong_kind_is_dead_lettered(worker, deadline):
    incoming = delivery(headers={protocol.HEADER_DEADLINE: deadline}, reply_to=None)
    assert worker.admit(incoming) is None
    (letter,) = worker.connection.published
    assert letter["exchange"] == protocol.DEAD_LETTER_EXCHANGE
    assert letter["headers"][protocol.HEADER_DEATH_REASON] == "malformed"
    assert protocol.HEADER_DEADLINE in letter["headers"][protocol.HEADER_DEATH_DETAIL]


def test_a_deadline_far_ahead_is_cut_to_the_longest_allowed(worker):
    far = time.time() + 1e12
    request = worker.admit(delivery(headers={protocol.HEADER_DEADLINE: far}))
    assert request is not None
    assert request.deadline <= time.time() + protocol.MAX_DEADLINE + 1


def test_a_counted_copy_of_a_request_due_in_ages_gets_an_expiration_rabbitmq_takes(
    worker,
):
    incoming = delivery(
        headers={protocol.HEADER_DEADLINE: time.time() + 1e12}, redelivered=True
    )
    assert worker.admit(incoming) is None
    (copy,) = worker.connection.published
    assert int(copy["properties"]["expiration"]) <= protocol.MAX_DEADLINE_MS


# -- content ---------------------------------------------------------------------


def test_a_compressed_body_gets_a_clear_error_reply(worker):
    assert worker.admit(delivery(content_encoding="gzip")) is None
    error = error_of(worker.connection.published[0])
    assert error["type"] == "MalformedRequestError"
    assert "content encoding 'gzip'" in error["message"]


def test_json_with_a_charset_is_json(worker):
    incoming = delivery(content_type="application/json; charset=utf-8")
    assert worker.admit(incoming) is not None


def test_an_unexpected_keyword_argument_is_named(worker):
    body = b'{"args": [], "kwargs": {"nom": "ada"}}'
    assert worker.admit(delivery(body)) is None
    error = error_of(worker.connection.published[0])
    assert error["type"] == "InvalidArgumentsError"
    assert "got an unexpected keyword argument 'nom'" in error["message"]


@pytest.mark.parametrize(
    ("body", "method", "kind"),
    [
        (b"not json", "hello", "MalformedRequestError"),
        (b'{"args": [1, 2]}', "hello", "InvalidArgumentsError"),
        (b"{}", "nope", "MethodNotFoundError"),
    ],
)
def test_framework_errors_say_where_they_were_refused(worker, body, method, kind):
    assert worker.admit(delivery(body), method) is None
    error = error_of(worker.connection.published[0])
    assert error["type"] == kind
    assert error["traceback"].startswith(f"{kind}: {error['message']}")


# -- what cannot be read, or copied ------------------------------------------------


def test_a_delivery_whose_properties_cannot_be_read_is_dead_lettered_as_it_came(
    worker,
):
    incoming = malformed()
    assert worker.admit(incoming) is None
    (letter,) = worker.connection.published
    assert letter["exchange"] == protocol.DEAD_LETTER_EXCHANGE
    assert letter["routing_key"] == protocol.service_queue("greeter")
    assert letter["body"] == incoming.body
    headers = letter["headers"]
    assert headers[protocol.HEADER_DEATH_REASON] == deadletter.REASON_MALFORMED
    assert "nested deeper" in headers[protocol.HEADER_DEATH_DETAIL]
    raw = base64.b64decode(headers[protocol.HEADER_RAW_PROPERTIES])
    assert raw == incoming.raw_properties
    assert worker.connection.acked == [incoming]


def test_one_that_cannot_even_be_dead_lettered_is_rejected_without_requeue(worker):
    worker.connection.unencodable = 1
    incoming = malformed()
    assert worker.admit(incoming) is None
    assert worker.connection.rejected == [(incoming, False)]
    assert worker.connection.published == []


def test_a_cast_whose_copy_cannot_be_encoded_is_dead_lettered_not_requeued(worker):
    # The counted copy of a redelivered cast fails to encode: its original's bytes
    # go to the dead-letter queue with headers of our own, once.
    worker.connection.unencodable = 1
    incoming = delivery(reply_to=None, redelivered=True, headers={"odd": 2**70})
    assert worker.admit(incoming) is None
    (letter,) = worker.connection.published
    assert letter["exchange"] == protocol.DEAD_LETTER_EXCHANGE
    assert letter["body"] == incoming.body
    assert letter["headers"][protocol.HEADER_DEATH_REASON] == "malformed"
    assert "cannot be encoded" in letter["headers"][protocol.HEADER_DEATH_DETAIL]
    assert "odd" not in letter["headers"]
    assert worker.connection.rejected == []


def test_a_request_whose_reply_cannot_be_written_is_dropped_not_retried(worker):
    worker.connection.unencodable = 1
    incoming = delivery(b"not json")
    worker.admit(incoming)
    assert worker.connection.acked == [incoming]
    assert worker.connection.rejected == []
