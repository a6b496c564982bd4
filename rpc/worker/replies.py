"""Replies: publish the answer to a request, then ack the request."""

from __future__ import annotations

import logging

from rpc import protocol, serialization
from rpc.errors import SerializationError
from rpc.observability.observers import WorkerObserver
from rpc.serialization import JsonValue
from rpc.transport import BrokerConnection, Delivery

log = logging.getLogger(__name__)

UNANSWERABLE = "a request for %s cannot be answered, dropped: %s"


class ReplyPublisher:
    """Answers requests on the worker's connection; a cast is only acknowledged."""

    def __init__(
        self,
        connection: BrokerConnection,
        *,
        limit: int,
        observer: WorkerObserver | None = None,
    ) -> None:
        self._connection = connection
        self._limit = limit
        #: Set only when the observer measures sizes: else one check per reply.
        measures = observer is not None and observer.measures_sizes
        self._sizes = observer if measures else None

    def reply(
        self,
        delivery: Delivery,
        *,
        result: JsonValue = None,
        error_payload: dict[str, str] | None = None,
        idempotent: bool = False,
        service: str = "",
    ) -> None:
        """Publish the result (or error) to ``reply_to``, then ack ``delivery``.

        ``service`` names the replying service for an observer that measures sizes.
        """
        if not delivery.reply_to:
            self._connection.ack(delivery)
            return
        try:
            body = serialization.encode(
                protocol.error_body(error_payload)
                if error_payload is not None
                else protocol.result_body(result),
                limit=self._limit,
            )
        except SerializationError as exc:
            body = serialization.encode(
                protocol.error_body(
                    serialization.error_payload(exc, with_traceback=False)
                )
            )
        if self._sizes is not None:
            replier = service or delivery.routing_key.partition(".")[0]
            self._sizes.replied(replier, len(body))
        # Ack only once the reply is out: a crash in between redelivers the request,
        # never drops it. Replies to direct reply-to must not be mandatory: RabbitMQ
        # would return them as unroutable even though they are delivered.
        try:
            self._connection.publish_and_ack(
                delivery,
                body,
                exchange="",
                routing_key=delivery.reply_to,
                content_type=serialization.CONTENT_TYPE,
                # Tells the caller it may retry this method after a connection loss.
                headers=protocol.reply_headers(idempotent=idempotent),
                properties={
                    "correlation_id": delivery.correlation_id,
                    "delivery_mode": 1,
                },
            )
        except SerializationError as exc:
            # Its reply_to or correlation_id cannot be written back (nothing was):
            # no reply can reach that caller, and another try would fail the same.
            log.warning(UNANSWERABLE, delivery.routing_key, exc)
            self._connection.ack(delivery)


#: Where a framework rejection's one-line traceback says it was refused.
REFUSED = "refused by the worker before any handler ran"


def framework_error(error: Exception) -> dict[str, str]:
    """The error payload of a framework rejection: its type and message, and for a
    traceback the one line that says where it was refused (no handler ran, so
    there is no stack worth sending)."""
    kind = type(error).__name__
    message = getattr(error, "message", str(error))
    return {
        "type": kind,
        "message": message,
        "traceback": f"{kind}: {message} ({REFUSED})",
    }
