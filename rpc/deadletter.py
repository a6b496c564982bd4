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

Events (the durable queues of ``@event_handler``) are counted the same way, also on
quorum queues, where workers compare the broker's count with the limit themselves:
event queues keep the arguments they were first declared with. A handler that raises
gets its event again, as a counted copy at the back of the queue, until its last
delivery, whose failure dead-letters the event (``handler-error``). So does a cast
(a request without ``reply_to``): nobody hears of its failure either. A call's
failure is its reply.

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
#: An event's or a cast's handler raised on its last allowed delivery.
REASON_HANDLER_ERROR = "handler-error"

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

    Our own count (``x-rpc-delivery-count``, 1 when absent) is in every copy a worker
    or a caller sent again. Quorum queues add how often they took this copy back
    (``x-delivery-count``, absent or 0 on a first delivery).
    """
    count = headers.get(protocol.HEADER_DELIVERY_COUNT, 1)
    if not _is_count(count, minimum=1):
        count = 1
    if queue_type == "quorum":
        returned = headers.get(protocol.HEADER_BROKER_DELIVERY_COUNT, 0)
        if _is_count(returned, minimum=0):
            count += returned
    return int(count)


def _is_count(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def verdict(
    *,
    redelivered: bool,
    headers: Mapping[str, Any],
    delivery_limit: int,
    queue_type: str = "classic",
    broker_limit: bool = True,
) -> Verdict:
    """Run a delivery, count it and requeue it, or dead-letter it (see the module).

    ``broker_limit``: a quorum queue declared with :func:`queue_arguments` enforces
    the limit itself; for one without (an event queue) the worker does.
    """
    count = delivery_count(headers, queue_type)
    if queue_type == "quorum":
        # The broker counted the return already: nothing to requeue.
        if broker_limit or count <= delivery_limit:
            return Verdict(Action.RUN, count)
        return Verdict(Action.DEAD_LETTER, count)
    if not redelivered:
        return Verdict(Action.RUN, count)
    count += 1
    if count > delivery_limit:
        return Verdict(Action.DEAD_LETTER, count)
    return Verdict(Action.REQUEUE_COUNTED, count)


def failure_verdict(*, delivery_count: int, delivery_limit: int) -> Verdict:
    """After an event's or a cast's handler raised: deliver it again, or dead-letter it.

    Again means a counted copy at the back of the queue (:func:`counted_headers`),
    so a handler that always raises runs exactly ``delivery_limit`` times.
    """
    if delivery_count >= delivery_limit:
        return Verdict(Action.DEAD_LETTER, delivery_count)
    return Verdict(Action.REQUEUE_COUNTED, delivery_count + 1)


def retry_delay(failed_runs: int, *, base: float, cap: float) -> float:
    """Seconds to wait before running again what failed ``failed_runs`` times in a row.

    ``base`` after the first failure, doubling after each one after that, never more
    than ``cap``: a handler whose database is down for a few seconds gets runs spread
    over those seconds rather than all of them in the first millisecond.
    """
    if base <= 0 or failed_runs < 1:
        return 0.0
    # Capping the exponent first keeps 2 ** n from growing without bound.
    return min(cap, base * 2.0 ** min(failed_runs - 1, 64))


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
    """Headers of the copy a worker requeues in place of a delivered message.

    Without the broker's count: a quorum queue starts the copy's at zero, and would
    leave a stale one in place.
    """
    result = {**headers, protocol.HEADER_DELIVERY_COUNT: count}
    result.pop(protocol.HEADER_BROKER_DELIVERY_COUNT, None)
    return result


def dead_letter_headers(
    headers: Mapping[str, Any], reason: str, detail: str = "", *, queue: str = ""
) -> dict[str, Any]:
    """Headers of a message moved to a dead-letter queue: why, in our own words.

    ``queue`` is the queue it came from, where a requeue sends it back.
    """
    result = {**headers, protocol.HEADER_DEATH_REASON: reason}
    if detail:
        result[protocol.HEADER_DEATH_DETAIL] = detail[:1000]
    if queue:
        result[protocol.HEADER_ORIGIN_QUEUE] = queue
    return result


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A message found in a dead-letter queue."""

    body: bytes
    headers: Mapping[str, Any]
    content_type: str | None
    #: Sent back to its queue by :func:`inspect` with ``requeue``.
    requeued: bool = False

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
    def queue(self) -> str:
        """The queue it was taken from, when its headers say."""
        queue = self.headers.get(protocol.HEADER_ORIGIN_QUEUE)
        if queue is None:
            queue = self.headers.get(protocol.HEADER_FIRST_DEATH_QUEUE, "")
        return str(queue)

    @property
    def event_type(self) -> str:
        """The event's type, for an event handler's dead letter."""
        return str(self.headers.get(protocol.HEADER_EVENT_TYPE, ""))

    @property
    def method(self) -> str:
        """The method called, or the event handler whose queue it came from."""
        method = self.headers.get(protocol.HEADER_METHOD)
        if isinstance(method, str):
            return method
        handler = protocol.event_queue_handler(self.queue)
        return handler[1] if handler is not None else ""


#: Headers a requeued dead letter sheds: it starts over as a fresh message.
DEATH_HEADERS = (
    protocol.HEADER_DEATH_REASON,
    protocol.HEADER_DEATH_DETAIL,
    protocol.HEADER_DELIVERY_COUNT,
    protocol.HEADER_BROKER_DELIVERY_COUNT,
    protocol.HEADER_ORIGIN_QUEUE,
    protocol.HEADER_FIRST_DEATH_REASON,
    protocol.HEADER_FIRST_DEATH_QUEUE,
    "x-first-death-exchange",
    "x-death",
)


def requeue_route(service: str, letter: DeadLetter) -> tuple[str, str]:
    """The (exchange, routing key) a requeue publishes ``letter`` with.

    A sharded request goes back through the shard exchange, to whichever worker
    owns its key now (its own queue went with the worker that took it); anything
    else straight to :func:`requeue_queue`.
    """
    shard_key = letter.headers.get(protocol.HEADER_SHARD_KEY)
    if isinstance(shard_key, str) and shard_key and letter.method:
        return protocol.RPC_EXCHANGE, protocol.shard_routing_key(service, letter.method)
    return "", requeue_queue(service, letter)


def requeue_queue(service: str, letter: DeadLetter) -> str:
    """Where a requeue sends ``letter``: its own queue, if ``service`` consumes it.

    Anything else (an old message, one published by hand) goes to the service queue.
    """
    queue = letter.queue
    if queue and protocol.owns_queue(service, queue):
        return queue
    return protocol.service_queue(service)


def inspect(
    config: Config, service: str, *, limit: int = 100, requeue: bool = False
) -> list[DeadLetter]:
    """Up to ``limit`` messages of ``service``'s dead-letter queue.

    They stay in the queue, unless ``requeue``: then each is published back to the
    queue it came from (:func:`requeue_route`) as a fresh message (its count and
    death headers removed), and only once the broker confirms that a queue took it
    is it removed from the dead-letter queue. A failure in between duplicates a
    message rather than losing it, and one whose queue is gone (the broadcast queue
    of a worker that stopped) stays, with ``requeued`` false.
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
            returned: list[object] = []
            # A mandatory publish that no queue takes comes back before its confirm.
            channel.events["basic_return"].add(lambda *args: returned.append(args))
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
                if requeue:
                    returned.clear()
                    _republish(channel, service, letter, message.properties)
                    if not returned:
                        channel.basic_ack(message.delivery_info["delivery_tag"])
                        letter = dataclasses.replace(letter, requeued=True)
                found.append(letter)
            # Hand back everything we looked at and kept, in its order.
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
    exchange, routing_key = requeue_route(service, letter)
    # Confirmed before the dead letter is acknowledged, so a requeue never loses one.
    channel.basic_publish_confirm(
        message, exchange=exchange, routing_key=routing_key, mandatory=True
    )
