"""Delivery: a message as it came off the broker, in our terms, and its constructors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """A message as it came off the broker, in our own terms."""

    body: bytes
    content_type: str | None
    headers: Mapping[str, Any]
    correlation_id: str | None
    reply_to: str | None
    #: An int on AMQP; Kombu's virtual transports tag deliveries with uuid strings.
    delivery_tag: int | str
    redelivered: bool
    routing_key: str
    exchange: str
    consumer_tag: str
    #: Connection generation it arrived on: acks are only valid on the same one.
    generation: int
    properties: Mapping[str, Any]
    #: Why its properties could not be read, when they could not: headers and
    #: properties are then empty, and the body is as it came.
    malformed: str | None = None
    #: The content header's payload as it came, when ``malformed`` (empty when the
    #: transport never had it as bytes).
    raw_properties: bytes = b""


DeliveryCallback = Callable[[Delivery], None]


def from_message(message: Any, generation: int) -> Delivery:
    """A py-amqp or Kombu message (delivered or returned) as a Delivery."""
    # py-amqp and Kombu's virtual transports spell a message differently.
    properties = message.properties
    info = message.delivery_info or {}  # None on returned messages
    headers = properties.get("application_headers") or getattr(message, "headers", None)
    content_type = properties.get("content_type") or getattr(
        message, "content_type", None
    )
    body = message.body
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes) or not isinstance(headers or {}, Mapping):
        raise TypeError("a message whose body is not bytes or headers not a table")
    return Delivery(
        body=body,
        content_type=content_type,
        headers=headers or {},
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        delivery_tag=info.get("delivery_tag") or _attribute(message, "delivery_tag"),
        redelivered=bool(
            info.get("redelivered") or getattr(message, "redelivered", False)
        ),
        routing_key=info.get("routing_key", ""),
        exchange=info.get("exchange", ""),
        consumer_tag=info.get("consumer_tag", ""),
        generation=generation,
        properties=properties,
    )


def malformed_message(message: Any, generation: int, exc: Exception) -> Delivery:
    """A message :func:`from_message` could not read, with its body as it came."""
    body = getattr(message, "body", b"")
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    info = getattr(message, "delivery_info", None)
    info = info if isinstance(info, dict) else {}
    return Delivery(
        body=body if isinstance(body, bytes) else b"",
        content_type=None,
        headers={},
        correlation_id=None,
        reply_to=None,
        delivery_tag=info.get("delivery_tag") or _attribute(message, "delivery_tag"),
        redelivered=bool(info.get("redelivered")),
        routing_key=str(info.get("routing_key", "")),
        exchange=str(info.get("exchange", "")),
        consumer_tag=str(info.get("consumer_tag", "")),
        generation=generation,
        properties={},
        malformed=f"{type(exc).__name__}: {exc}",
    )


def _attribute(message: Any, name: str) -> int | str:
    # py-amqp's returned messages have no delivery_info, and its property then fails.
    try:
        value = getattr(message, name)
    except (AttributeError, KeyError, TypeError):
        return 0
    return value if isinstance(value, (int, str)) else 0


def from_returned(
    message: Mapping[str, Any], exchange: str, routing_key: str
) -> Delivery:
    """A message Kombu's virtual transport prepared (a dict) that nothing routes."""
    properties = dict(message.get("properties") or {})
    return Delivery(
        body=message["body"],
        content_type=message.get("content-type"),
        headers=message.get("headers") or {},
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        delivery_tag=0,
        redelivered=False,
        routing_key=routing_key,
        exchange=exchange,
        consumer_tag="",
        generation=0,
        properties=properties,
    )
