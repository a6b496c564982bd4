"""What a worker declares on connect before its consumers: the exchanges every
service needs, the channel's prefetch, and each service's dead-letter queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpc import deadletter, protocol


def declare_worker(channel: Any, *, prefetch: int, queue_type: str) -> None:
    """Declare the exchanges a worker's queues hang off, and set the prefetch."""
    channel.exchange_declare(
        exchange=protocol.RPC_EXCHANGE,
        type="topic",
        durable=True,
        auto_delete=False,
    )
    # Prefetch for the whole channel: every service of this process together never
    # holds more unacknowledged requests than it has handler slots. Quorum queues
    # refuse a channel-wide prefetch: there it is per consumer.
    channel.basic_qos(0, prefetch, queue_type != "quorum")
    _declare_dead_letter_exchanges(channel, queue_type)


def _declare_dead_letter_exchanges(channel: Any, queue_type: str) -> None:
    channel.exchange_declare(
        exchange=protocol.DEAD_LETTER_EXCHANGE,
        type="direct",
        durable=True,
        auto_delete=False,
    )
    if queue_type == "quorum":
        channel.exchange_declare(
            exchange=protocol.DEAD_LETTER_FILTER_EXCHANGE,
            type="headers",
            durable=True,
            auto_delete=False,
        )
        channel.exchange_bind(
            destination=protocol.DEAD_LETTER_EXCHANGE,
            source=protocol.DEAD_LETTER_FILTER_EXCHANGE,
            routing_key="",
            arguments=deadletter.filter_binding_arguments(),
        )


def declare_dead_letter_queue(
    channel: Any,
    service: str,
    *,
    queue_type: str,
    placement: Mapping[str, Any] | None = None,
) -> None:
    """Declare the queue an operator finds ``service``'s poison messages in."""
    queue = protocol.dead_letter_queue(service)
    channel.queue_declare(
        queue=queue,
        durable=True,
        auto_delete=False,
        exclusive=False,
        arguments=protocol.typed_queue_arguments(queue_type, placement),
    )
    channel.queue_bind(
        queue=queue,
        exchange=protocol.DEAD_LETTER_EXCHANGE,
        routing_key=protocol.service_queue(service),
    )
