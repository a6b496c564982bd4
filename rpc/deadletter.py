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

This module holds the decisions and the queue arguments (the worker does that I/O,
in :mod:`rpc.worker.failures`); :mod:`rpc.dead_letters` is the operator's tool
(``rpc dead-letters SERVICE``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from rpc import protocol

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
