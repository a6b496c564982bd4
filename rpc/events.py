"""Events: dispatching them, and the subscription queues behind each handler type.

An event is published once to the ``rpc.events`` topic exchange with routing key
``<source>.<event type>``. Each ``@event_handler`` has its own queue bound with its
filters, so every subscribing handler gets its own copy, and the handler type decides
how the workers of the subscribing service share that queue.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rpc import protocol, serialization
from rpc.entrypoints import EventHandlerEntrypoint
from rpc.errors import SerializationError
from rpc.serialization import JsonValue
from rpc.transport import Delivery


@dataclasses.dataclass(frozen=True)
class Event:
    """An event as a handler receives it."""

    source: str
    event_type: str
    payload: JsonValue


def declare_exchange(channel: Any) -> None:
    """Declare the events exchange; publishers and subscribers both do, on connect."""
    channel.exchange_declare(
        exchange=protocol.EVENTS_EXCHANGE, type="topic", durable=True, auto_delete=False
    )


def declare_subscription(
    channel: Any,
    service: str,
    entrypoint: EventHandlerEntrypoint,
    *,
    instance: str,
    arguments: dict[str, Any] | None = None,
) -> str:
    """Declare and bind the queue of one event handler; return its name.

    ``arguments`` (e.g. the quorum queue type) apply to the shared, durable queues
    only: a broadcast queue lives and dies with one connection.
    """
    handler_type = entrypoint.handler_type
    queue = protocol.event_queue(
        service, entrypoint.method_name, handler_type, instance
    )
    if handler_type == protocol.BROADCAST:
        channel.queue_declare(
            queue=queue, durable=False, exclusive=True, auto_delete=True
        )
    else:
        channel.queue_declare(
            queue=queue,
            durable=True,
            exclusive=False,
            auto_delete=False,
            arguments={
                **(arguments or {}),
                **protocol.event_queue_arguments(handler_type),
            },
        )
    for pattern in entrypoint.event_types:
        channel.queue_bind(
            queue=queue,
            exchange=protocol.EVENTS_EXCHANGE,
            routing_key=protocol.event_binding(entrypoint.source_service, pattern),
        )
    return queue


def subscription_queue_type(handler_type: str, queue_type: str) -> str:
    """The type of a handler's queue: a broadcast queue is exclusive, so classic."""
    return "classic" if handler_type == protocol.BROADCAST else queue_type


def copy_headers(delivery: Delivery) -> dict[str, Any]:
    """Headers for a copy of an event published straight to a queue.

    The copy's routing key is that queue's name, so it carries the source and type
    the event's routing key said, for a publisher that left them out of the headers.
    """
    headers = dict(delivery.headers)
    if delivery.exchange == protocol.EVENTS_EXCHANGE:
        source, _, event_type = delivery.routing_key.partition(".")
        headers.setdefault(protocol.HEADER_EVENT_SOURCE, source)
        headers.setdefault(protocol.HEADER_EVENT_TYPE, event_type)
    return headers


def encode_event(
    source: str, event_type: str, payload: JsonValue, *, limit: int | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Body and headers of an event; raises ValueError or SerializationError."""
    protocol.check_service_name(source)
    protocol.check_event_type(event_type)
    body = serialization.encode(payload, limit=limit)
    return body, protocol.event_headers(source, event_type)


def decode_event(delivery: Delivery, *, limit: int | None = None) -> Event:
    """The event a delivery carries; SerializationError if it cannot be read."""
    if limit is not None and len(delivery.body) > limit:
        raise SerializationError(
            f"event of {len(delivery.body)} bytes is over the limit of {limit}"
        )
    encoding = delivery.properties.get("content_encoding")
    payload = serialization.decode(
        delivery.body,
        delivery.content_type,
        encoding if isinstance(encoding, str) else None,
    )
    headers = delivery.headers
    source, _, event_type = delivery.routing_key.partition(".")
    return Event(
        source=str(headers.get(protocol.HEADER_EVENT_SOURCE, source)),
        event_type=str(headers.get(protocol.HEADER_EVENT_TYPE, event_type)),
        payload=payload,
    )
