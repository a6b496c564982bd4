"""One failure policy for requests and events: counted requeue, retry queue, dead
letter, each a copy of the message published before the original is acknowledged.

The rules are :mod:`rpc.deadletter`'s; this module does their I/O. What differs
between a request and an event (the queue a copy goes back to, the headers it keeps)
is asked of the consumer it came from, its :class:`Origin`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from rpc import deadletter, protocol, serialization
from rpc.config import Config
from rpc.errors import BrokerError, MalformedRequestError, SerializationError
from rpc.observability.observers import DEAD_LETTERED, QUIET, WorkerObserver
from rpc.protocol import Request
from rpc.transport import BrokerConnection, Delivery, QueueRefusedError
from rpc.worker.retry_queues import RetryQueues

log = logging.getLogger(__name__)

HANDLER_FAILED = "%s.%s failed: %s"
UNENCODABLE = "%s: a copy of %s cannot be encoded (%s): dead-lettered as it came"
DROPPED = "%s: %s could not even be dead-lettered (%s): rejected, not requeued"

#: Largest content header (bytes) a malformed dead letter keeps in
#: ``x-rpc-raw-properties``: base64 makes it a third larger, and the copy's own
#: header must still fit the broker's frame size (128 KiB by default).
RAW_PROPERTIES_KEPT = 64 * 1024
POISON = "%s: %s was delivered %d times and never acknowledged: poison"
DEAD_LETTERED_LOG = "%s: message moved to the dead-letter queue (%s): %s"
COPY_NOT_TAKEN = "%s: the broker did not take the copy of %s sent to %r (%s)"
RETRY_QUEUE_UNAVAILABLE = "%s: retry queue unavailable (%s): requeued without a wait"
#: Seconds a worker waits for the broker to confirm a copy before it gives the
#: original back to its queue instead.
COPY_CONFIRM_TIMEOUT = 10.0
#: Seconds a handler thread pauses before it gives back an original whose copy
#: the broker did not take: what refused the copy (a node down) is rarely back
#: sooner, and the original would come straight back to be copied again.
GIVE_BACK_PAUSE = 0.5
#: What a dead letter kept as it came says of its body: bytes, whatever they are.
RAW_CONTENT_TYPE = "application/octet-stream"
RAW_CONTENT_ENCODING = "binary"

#: Message properties a requeued or dead-lettered copy keeps.
COPIED_PROPERTIES = (
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)


class Origin(Protocol):
    """What the failure policy asks of the consumer a message came from."""

    @property
    def service(self) -> str:
        """The service whose dead-letter queue takes the message."""

    @property
    def queue(self) -> str:
        """The queue it came from, where a requeued dead letter goes back to."""

    @property
    def label(self) -> str:
        """Names the consumer in log lines: ``service`` or ``service.handler``."""

    @property
    def what(self) -> str:
        """ "a request" or "an event", for log lines."""

    @property
    def counts_dead_letters(self) -> bool:
        """True when a poison or malformed message is dead-lettered with its count."""

    def copy_headers(self, delivery: Delivery, count: int) -> dict[str, Any]:
        """Headers of a copy of ``delivery`` carrying ``count``."""

    def requeue_route(self, headers: Mapping[str, Any]) -> tuple[str, str, bool]:
        """(exchange, routing key, may wait in a retry queue) of a requeued copy."""


class FailurePolicy:
    """Counts deliveries, and runs again or dead-letters what failed."""

    def __init__(
        self,
        connection: BrokerConnection,
        config: Config,
        retry_queues: RetryQueues,
        *,
        delays_retries: bool,
        observer: WorkerObserver = QUIET,
    ) -> None:
        self._connection = connection
        self._config = config
        self._retry_queues = retry_queues
        self._delays_retries = delays_retries
        #: Copies wait for the broker's publisher confirm before the original is
        #: acknowledged (``copies: confirmed``, the default).
        self._confirmed = config.copies == "confirmed"
        self._observer = observer

    def count(
        self, origin: Origin, delivery: Delivery, *, queue_type: str
    ) -> int | None:
        """The delivery count to run ``delivery`` with, or None when it was settled.

        A redelivery on a classic queue goes to the back of it as a counted copy;
        one past ``delivery_limit`` to the dead-letter queue. The worker enforces
        the limit on quorum queues too: a quorum queue's own limit counts the
        returns of this copy only, and event queues have none. One whose
        properties could not be read is never run: it is dead-lettered at once
        (:meth:`malformed`).
        """
        if delivery.malformed is not None:
            self.malformed(origin, delivery)
            return None
        if delivery.redelivered:
            self._observer.redelivered(origin.service)
        verdict = deadletter.verdict(
            redelivered=delivery.redelivered,
            headers=delivery.headers,
            delivery_limit=self._config.delivery_limit,
            queue_type=queue_type,
            broker_limit=False,
        )
        if verdict.action is deadletter.Action.REQUEUE_COUNTED:
            self.requeue(origin, delivery, verdict.delivery_count)
            return None
        if verdict.action is deadletter.Action.DEAD_LETTER:
            times = verdict.delivery_count - 1
            log.error(POISON, origin.label, origin.what, times)
            self.dead_letter(
                origin,
                delivery,
                deadletter.REASON_DELIVERY_LIMIT,
                f"delivered {times} times, never acknowledged",
                count=times if origin.counts_dead_letters else None,
            )
            return None
        return verdict.delivery_count

    def handler_failed(
        self, origin: Origin, delivery: Delivery, request: Request, exc: Exception
    ) -> None:
        """A handler that nobody waits for raised: run it again, or past the limit
        dead-letter it (``handler-error``); both carry the new count."""
        log.warning(
            HANDLER_FAILED,
            request.service,
            request.method,
            exc,
            exc_info=exc,
            extra=call_fields(request, delivery),
        )
        verdict = deadletter.failure_verdict(
            delivery_count=request.delivery_count,
            delivery_limit=self._config.delivery_limit,
        )
        if verdict.action is deadletter.Action.DEAD_LETTER:
            detail = f"{type(exc).__name__}: {exc}"
            self.dead_letter(
                origin,
                delivery,
                deadletter.REASON_HANDLER_ERROR,
                detail,
                count=verdict.delivery_count,
            )
        else:
            self.requeue(origin, delivery, verdict.delivery_count, after_failure=True)

    def requeue(
        self,
        origin: Origin,
        delivery: Delivery,
        count: int,
        *,
        after_failure: bool = False,
    ) -> None:
        """Put a counted copy at the back of its queue, then ack the original.

        After a failed run the copy waits in a retry queue first, where the origin
        allows it (see :meth:`_retry_route`).
        """
        headers = origin.copy_headers(delivery, count)
        exchange, routing_key, may_wait = origin.requeue_route(headers)
        properties = copied_properties(delivery)
        retry_queue = None
        if after_failure and may_wait:
            retry_queue = self._retry_route(origin, routing_key, count, properties)
        try:
            deadline = protocol.parse_deadline(headers.get(protocol.HEADER_DEADLINE))
        except MalformedRequestError:
            deadline = None  # refused when it runs; the copy just keeps no TTL
        if deadline is not None:
            properties["expiration"] = protocol.expiration_ms(deadline)
        # The copy is confirmed before the original is acknowledged (unless
        # ``copies: unconfirmed``): a copy to a queue whose node died comes back
        # unroutable (or nacked), and the original is then still ours to send
        # elsewhere. While the
        # confirm is on its way, the copy may already run: at-least-once, as always.
        if retry_queue is not None:
            taken = self.copy(
                origin,
                delivery,
                exchange="",
                routing_key=retry_queue,
                headers=headers,
                properties=properties,
                give_back=False,
            )
            if taken:
                return
            # Declared again before the next copy: a queue on a dead node is then
            # refused at once. This one goes straight back to its queue.
            self._retry_queues.forget(retry_queue)
        self.copy(
            origin,
            delivery,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            properties=properties,
        )

    def dead_letter(
        self,
        origin: Origin,
        delivery: Delivery,
        reason: str,
        detail: str,
        *,
        count: int | None = None,
    ) -> None:
        """Move a message to its service's dead-letter queue, then ack it.

        With ``count``, the copy carries it (:meth:`Origin.copy_headers`); without,
        the delivery's own headers.
        """
        service = origin.service
        log.warning(DEAD_LETTERED_LOG, service, reason, detail)
        self._dead_lettered(origin, delivery, reason)
        headers = deadletter.dead_letter_headers(
            delivery.headers if count is None else origin.copy_headers(delivery, count),
            reason,
            detail,
            queue=origin.queue,
        )
        properties = copied_properties(delivery)
        properties.pop("expiration", None)  # kept until an operator looks at it
        properties["delivery_mode"] = 2
        self.copy(
            origin,
            delivery,
            exchange=protocol.DEAD_LETTER_EXCHANGE,
            routing_key=protocol.service_queue(service),
            headers=headers,
            properties=properties,
            # One that came without a content type is not claimed to be JSON.
            content_type="application/octet-stream",
        )

    def malformed(self, origin: Origin, delivery: Delivery) -> None:
        """Dead-letter a delivery whose properties could not be read, as it came.

        Never retried: it would fail the same way on every worker.
        """
        log.warning(DEAD_LETTERED_LOG, origin.service, "malformed", delivery.malformed)
        self._dead_lettered(origin, delivery, deadletter.REASON_MALFORMED)
        self._dead_letter_raw(
            origin, delivery, f"unreadable properties: {delivery.malformed}"
        )

    def _dead_lettered(self, origin: Origin, delivery: Delivery, reason: str) -> None:
        """Tell the observer; a message dead-lettered without a run is settled so."""
        observer = self._observer
        observer.dead_lettered(origin.service, reason)
        if reason != deadletter.REASON_HANDLER_ERROR:
            # A handler error was counted as the run's outcome already.
            method, kind = observed_labels(origin, delivery)
            observer.settled(origin.service, method, kind, DEAD_LETTERED)

    def copy(
        self,
        origin: Origin,
        delivery: Delivery,
        *,
        exchange: str,
        routing_key: str,
        headers: Mapping[str, Any],
        properties: dict[str, Any],
        content_type: str = serialization.CONTENT_TYPE,
        give_back: bool = True,
    ) -> bool:
        """Publish a copy of ``delivery`` in its place, then ack it; True when done.

        The copy keeps the original's content type (``content_type`` when it had
        none) and encoding. False when the broker did not take the copy (refused,
        unroutable, not confirmed in time): the original is then not acknowledged,
        and ``give_back`` returns it to its queue. A copy that cannot be encoded (a
        header of no AMQP type, a property too long) dead-letters the original's
        bytes instead: requeueing it would come back here, again and again.
        """
        try:
            failure = self._publish_copy(
                delivery,
                delivery.body,
                exchange=exchange,
                routing_key=routing_key,
                content_type=delivery.content_type or content_type,
                content_encoding=str(
                    delivery.properties.get("content_encoding") or "utf-8"
                ),
                headers=headers,
                properties=properties,
            )
        except SerializationError as exc:
            log.error(UNENCODABLE, origin.label, origin.what, exc)
            self._dead_letter_raw(
                origin, delivery, f"its copy cannot be encoded: {exc}"
            )
            return True
        if failure is None:
            return True
        log.warning(COPY_NOT_TAKEN, origin.label, origin.what, routing_key, failure)
        if give_back:
            self._give_back(delivery)
        return False

    def _publish_copy(
        self, delivery: Delivery, body: bytes, **publish: Any
    ) -> str | None:
        """Publish a copy, then ack ``delivery``; None when done, else why not.

        Confirmed and mandatory unless ``copies: unconfirmed``: the unconfirmed
        copy and the ack leave in one lock hold on one channel, the ack right
        behind the copy, and a copy the broker then drops is lost.
        """
        connection = self._connection
        if not self._confirmed:
            connection.publish_and_ack(delivery, body, **publish)
            return None
        properties = dict(publish.pop("properties"))
        future = connection.publish_confirmed(
            body, mandatory=True, **publish, **properties
        )
        try:
            routed = wait_confirmed(connection, future, COPY_CONFIRM_TIMEOUT)
        except BrokerError as exc:
            return str(exc)
        if not routed:
            return "no queue to route it to"
        connection.ack(delivery)
        return None

    def _give_back(self, delivery: Delivery) -> None:
        """Return an original whose copy was not taken to its queue, after a pause.

        It comes back flagged as redelivered, so it is counted: an original the
        broker keeps refusing copies of ends in the dead-letter queue.
        """
        if not _on_event_loop():  # never block an event loop
            time.sleep(GIVE_BACK_PAUSE)
        # A connection lost meanwhile has given it back already.
        with contextlib.suppress(BrokerError):
            self._connection.reject(delivery, requeue=True)

    def _dead_letter_raw(self, origin: Origin, delivery: Delivery, detail: str) -> None:
        """Dead-letter ``delivery``'s body as it came, with headers of our own only
        (``malformed``, why, where from, and its raw properties when kept); when
        even that cannot be published, reject it without requeue."""
        headers = deadletter.dead_letter_headers(
            {}, deadletter.REASON_MALFORMED, detail, queue=origin.queue
        )
        raw = delivery.raw_properties
        if raw and len(raw) <= RAW_PROPERTIES_KEPT:
            headers[protocol.HEADER_RAW_PROPERTIES] = base64.b64encode(raw).decode()
        routing_key = protocol.service_queue(origin.service)
        try:
            failure = self._publish_copy(
                delivery,
                delivery.body,
                exchange=protocol.DEAD_LETTER_EXCHANGE,
                routing_key=routing_key,
                content_type=RAW_CONTENT_TYPE,
                content_encoding=RAW_CONTENT_ENCODING,
                headers=headers,
                properties={"delivery_mode": 2},
            )
        except SerializationError as exc:
            log.error(DROPPED, origin.label, origin.what, exc)
            self._connection.reject(delivery, requeue=False)
            return
        if failure is not None:
            log.warning(COPY_NOT_TAKEN, origin.label, origin.what, routing_key, failure)
            self._give_back(delivery)

    def _retry_route(
        self, origin: Origin, queue: str, count: int, properties: dict[str, Any]
    ) -> str | None:
        """The retry queue a copy for run ``count`` waits in, or None for none.

        The copy waits there for :func:`rpc.deadletter.retry_delay`, then RabbitMQ
        moves it back to ``queue`` by itself. None when there is no wait
        (``retry_delay`` 0, a transport without message TTLs), or when the broker
        refused the retry queue (a classic one whose home node is down): the copy
        then goes straight back to ``queue``, and the connection stays up.
        """
        delay = deadletter.retry_delay(
            count - 1,
            base=self._config.retry_delay,
            cap=self._config.retry_max_delay,
        )
        if delay <= 0 or not self._delays_retries:
            return None
        try:
            retry_queue = self._retry_queues.route(queue, max(1, round(delay * 1000)))
        except QueueRefusedError as exc:
            log.warning(RETRY_QUEUE_UNAVAILABLE, origin.label, exc)
            return None
        # Persistent: a copy waiting through a broker restart is not lost.
        properties["delivery_mode"] = 2
        return retry_queue


def wait_confirmed(
    connection: BrokerConnection,
    future: concurrent.futures.Future[bool],
    timeout: float,
) -> bool:
    """Wait for a publisher confirm, reading it on this thread when nobody else
    reads; True when a queue took the message, False when it was unroutable.

    BrokerError when it was refused, its connection lost, or ``timeout`` passed.
    """
    began = time.monotonic()
    connection.read_until(future.done, timeout)
    left = max(timeout - (time.monotonic() - began), 0.0)
    try:
        return future.result(timeout=left)
    except concurrent.futures.TimeoutError:
        raise BrokerError(f"not confirmed within {timeout:g}s") from None


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def copied_properties(delivery: Delivery) -> dict[str, Any]:
    """The properties of ``delivery`` that a copy of it keeps."""
    # Not user_id: RabbitMQ refuses a user_id other than the publisher's own. Not
    # priority: priority queues are not used, and Kombu takes it apart from the rest.
    return {
        name: delivery.properties[name]
        for name in COPIED_PROPERTIES
        if delivery.properties.get(name) is not None
    }


def observed_labels(origin: Origin, delivery: Delivery) -> tuple[str, str]:
    """The (method, kind) an observer counts a message settled without a run as."""
    _, dot, handler = origin.label.partition(".")
    if dot:
        return handler, "event"
    method = delivery.headers.get(protocol.HEADER_METHOD)
    if not isinstance(method, str):
        method = delivery.routing_key.rpartition(".")[2]
    return method, "call" if delivery.reply_to else "cast"


def call_fields(request: Request, delivery: Delivery) -> dict[str, Any]:
    """The fields a log line about ``request`` carries (see rpc.observability.logs)."""
    return {
        "service": request.service,
        "method": request.method,
        "correlation_id": request.correlation_id,
        "trace_id": protocol.trace_id(delivery.headers),
    }
