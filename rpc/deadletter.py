"""Poison messages: counting deliveries, and moving the hopeless to a dead-letter queue.

A request whose handler kills its process is redelivered forever unless something
counts. Quorum queues count for us (``x-delivery-limit`` with a dead-letter exchange).
Classic queues in RabbitMQ 3.10 keep no count, only a ``redelivered`` flag, so workers
keep it in the message itself:

1. A delivery without the flag runs, with the count its ``x-rpc-delivery-count``
   header says (1 when absent).
2. A delivery with the flag was handed to a worker before that never acknowledged it
   (the worker died, or lost its connection). The worker does not run it: it publishes
   a copy with the count plus one to the back of the same queue, then acknowledges
   the original, under one lock hold. The copy runs like any other request.
3. Once the count would pass ``delivery_limit``, the message goes to the dead-letter
   queue instead, with the reason in ``x-rpc-death-reason``.

A worker that dies between publishing the copy and acknowledging the original leaves
both in the queue: the request may run once more (at-least-once, as always), and the
original, redelivered again, is counted again, so the count still only grows.

This module holds the decisions and the queue arguments (the worker does that I/O),
and :func:`inspect` for operators (``rpc dead-letters SERVICE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from rpc import protocol
from rpc.config import Config
from rpc.transport import BrokerConnection

#: Reasons in ``x-rpc-death-reason``.
REASON_DELIVERY_LIMIT = "delivery-limit"
REASON_MALFORMED = "malformed"
REASON_METHOD_NOT_FOUND = "method-not-found"
REASON_INVALID_ARGUMENTS = "invalid-arguments"

#: Why RabbitMQ dead-letters a quorum queue's message that hit its delivery limit.
BROKER_DELIVERY_LIMIT_REASON = "delivery_limit"


class Action(enum.Enum):
    """What a worker does with a delivery before running anything."""

    RUN = "run"
    REQUEUE_COUNTED = "requeue-counted"
    DEAD_LETTER = "dead-letter"


@dataclasses.dataclass(frozen=True)
class Verdict:
    action: Action
    #: Deliveries of this request so far, this one included.
    delivery_count: int


def delivery_count(headers: Mapping[str, Any], queue_type: str = "classic") -> int:
    """Deliveries of a message so far, this one included, from its headers.

    Quorum queues say how often the message was returned before (``x-delivery-count``,
    0 on a first delivery); classic ones carry our own count.
    """
    if queue_type == "quorum":
        returned = headers.get(protocol.HEADER_BROKER_DELIVERY_COUNT, 0)
        return returned + 1 if _is_count(returned, minimum=0) else 1
    count = headers.get(protocol.HEADER_DELIVERY_COUNT, 1)
    return count if _is_count(count, minimum=1) else 1


def _is_count(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def verdict(
    *,
    redelivered: bool,
    headers: Mapping[str, Any],
    delivery_limit: int,
    queue_type: str = "classic",
) -> Verdict:
    """Run a delivery, count it and requeue it, or dead-letter it (see the module)."""
    count = delivery_count(headers, queue_type)
    if queue_type == "quorum" or not redelivered:
        # The broker enforces the limit of quorum queues itself.
        return Verdict(Action.RUN, count)
    count += 1
    if count > delivery_limit:
        return Verdict(Action.DEAD_LETTER, count)
    return Verdict(Action.REQUEUE_COUNTED, count)


def queue_arguments(
    service: str, *, queue_type: str, delivery_limit: int
) -> dict[str, Any]:
    """``queue.declare`` arguments of a service queue.

    A quorum queue dead-letters by itself past the limit. Its dead-letter exchange is
    the headers exchange :data:`~rpc.protocol.DEAD_LETTER_FILTER_EXCHANGE`, which lets
    only those poison messages through: requests that merely expired (their caller
    gave up) are dropped there, as a classic queue drops them.
    """
    if queue_type != "quorum":
        return {}
    return {
        "x-queue-type": "quorum",
        # RabbitMQ counts returns, not deliveries: limit N allows N + 1 deliveries.
        "x-delivery-limit": delivery_limit - 1,
        "x-dead-letter-exchange": protocol.DEAD_LETTER_FILTER_EXCHANGE,
        "x-dead-letter-routing-key": protocol.service_queue(service),
    }


def filter_binding_arguments() -> dict[str, Any]:
    """Arguments of the binding that passes only delivery-limit dead letters on."""
    return {
        # "-with-x": match on a header whose name starts with "x-" (RabbitMQ 3.10+).
        "x-match": "all-with-x",
        protocol.HEADER_FIRST_DEATH_REASON: BROKER_DELIVERY_LIMIT_REASON,
    }


def counted_headers(headers: Mapping[str, Any], count: int) -> dict[str, Any]:
    """Headers of the copy a worker requeues in place of a redelivered request."""
    return {**headers, protocol.HEADER_DELIVERY_COUNT: count}


def dead_letter_headers(
    headers: Mapping[str, Any], reason: str, detail: str = ""
) -> dict[str, Any]:
    """Headers of a message moved to a dead-letter queue: why, in our own words."""
    result = {**headers, protocol.HEADER_DEATH_REASON: reason}
    if detail:
        result[protocol.HEADER_DEATH_DETAIL] = detail[:1000]
    return result


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A message found in a dead-letter queue."""

    body: bytes
    headers: Mapping[str, Any]
    content_type: str | None

    @property
    def reason(self) -> str:
        """Our reason, or the broker's (quorum queues dead-letter by themselves)."""
        reason = self.headers.get(protocol.HEADER_DEATH_REASON)
        if reason is None:
            reason = self.headers.get(protocol.HEADER_FIRST_DEATH_REASON, "unknown")
        return str(reason)

    @property
    def detail(self) -> str:
        return str(self.headers.get(protocol.HEADER_DEATH_DETAIL, ""))

    @property
    def method(self) -> str:
        return str(self.headers.get(protocol.HEADER_METHOD, ""))


#: Headers a requeued dead letter sheds: it starts over as a fresh request.
DEATH_HEADERS = (
    protocol.HEADER_DEATH_REASON,
    protocol.HEADER_DEATH_DETAIL,
    protocol.HEADER_DELIVERY_COUNT,
    protocol.HEADER_FIRST_DEATH_REASON,
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-death",
)


def inspect(
    config: Config, service: str, *, limit: int = 100, requeue: bool = False
) -> list[DeadLetter]:
    """Up to ``limit`` messages of ``service``'s dead-letter queue.

    They stay in the queue, unless ``requeue``: then each is published back to the
    service queue as a fresh request (its count and death headers removed) and only
    then removed from the dead-letter queue, so a failure in between duplicates a
    message rather than losing it.
    """
    queue = protocol.dead_letter_queue(protocol.check_service_name(service))
    connection = BrokerConnection(
        config.broker_url,
        name="dead-letters",
        heartbeat=0,
        connect_timeout=config.connect_timeout,
        on_connect=lambda channel: channel.queue_declare(queue=queue, passive=True),
        reconnect=False,
    )
    connection.start()
    found: list[DeadLetter] = []
    try:
        with connection.channel() as channel:
            # Only what is there now: a requeued message that fails again comes back.
            _, waiting, _ = channel.queue_declare(queue=queue, passive=True)
            while len(found) < min(limit, waiting):
                message = channel.basic_get(queue=queue, no_ack=False)
                if message is None:
                    break
                body = message.body
                letter = DeadLetter(
                    body=body.encode() if isinstance(body, str) else bytes(body),
                    headers=dict(message.properties.get("application_headers") or {}),
                    content_type=message.properties.get("content_type"),
                )
                found.append(letter)
                if requeue:
                    _republish(channel, service, letter, message.properties)
                    channel.basic_ack(message.delivery_info["delivery_tag"])
            if not requeue:
                # Hand back everything we looked at, in its order.
                channel.basic_recover(requeue=True)
    finally:
        with contextlib.suppress(Exception):
            connection.stop()
    return found


def _republish(
    channel: Any, service: str, letter: DeadLetter, properties: Mapping[str, Any]
) -> None:
    headers = {k: v for k, v in letter.headers.items() if k not in DEATH_HEADERS}
    kept = {
        name: properties[name]
        for name in ("correlation_id", "reply_to", "delivery_mode", "message_id")
        if properties.get(name) is not None
    }
    message = channel.prepare_message(
        letter.body,
        None,
        letter.content_type or "application/json",
        properties.get("content_encoding") or "utf-8",
        headers,
        kept,
    )
    channel.basic_publish(
        message, exchange="", routing_key=protocol.service_queue(service)
    )
