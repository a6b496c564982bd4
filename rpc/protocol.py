"""The wire contract: exchange, queue and routing-key names, headers and envelopes.

Every name that appears on the broker is built here, and ``docs/protocol.md`` describes
exactly this module, so that a client written in any language can call a service.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rpc.errors import (
    REMOTE_ERROR_TYPES,
    MalformedRequestError,
    RemoteError,
    SerializationError,
)
from rpc.serialization import JsonValue

PROTOCOL_VERSION = 1

#: Topic exchange every request is published to, routed by ``<service>.<method>``.
RPC_EXCHANGE = "rpc"
#: Direct exchange that poison messages are moved to, routed by their queue's name.
DEAD_LETTER_EXCHANGE = "rpc.dead-letter"
#: RabbitMQ's pseudo-queue for replies: no queue is declared per caller or per call.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

HEADER_VERSION = "x-rpc-version"
#: Name of the method to run; the routing key is for routing, this is authoritative.
HEADER_METHOD = "x-rpc-method"
#: Absolute deadline of the call, in seconds since the Unix epoch (a float).
HEADER_DEADLINE = "x-rpc-deadline"
#: Who made the call: a service name, or ``"client"``.
HEADER_CALLER = "x-rpc-caller"
#: Times the worker saw this request before (set when a request is retried).
HEADER_DELIVERY_COUNT = "x-rpc-delivery-count"
#: Why a message was dead-lettered.
HEADER_DEATH_REASON = "x-rpc-death-reason"

_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_METHOD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_service_name(name: str) -> str:
    """Return ``name`` if it can name a service on the wire, else raise ValueError."""
    if not isinstance(name, str) or not _SERVICE_NAME.match(name):
        raise ValueError(
            f"invalid service name {name!r}: use letters, digits, '_' and '-'"
        )
    return name


def check_method_name(name: str) -> str:
    """Return ``name`` if it can be a method name on the wire, else raise ValueError."""
    if not isinstance(name, str) or not _METHOD_NAME.match(name):
        raise ValueError(f"invalid method name {name!r}: use a Python identifier")
    return name


def service_queue(service: str) -> str:
    """The durable queue every worker of ``service`` consumes requests from."""
    return f"rpc-{service}"


def dead_letter_queue(service: str) -> str:
    """The queue an operator inspects for a service's poison messages."""
    return f"rpc-{service}.dead-letter"


def routing_key(service: str, method: str) -> str:
    """Routing key of a request for ``service.method`` on :data:`RPC_EXCHANGE`."""
    return f"{service}.{method}"


def service_binding(service: str) -> str:
    """Binding key of a service queue: every method of that service."""
    return f"{service}.*"


def deadline_after(timeout: float, now: float | None = None) -> float:
    """Absolute epoch deadline ``timeout`` seconds from now."""
    return (time.time() if now is None else now) + timeout


def expiration_ms(deadline: float, now: float | None = None) -> str:
    """AMQP ``expiration`` of a request: the broker drops it past the deadline.

    At least one millisecond: zero would make RabbitMQ drop it unless a consumer waits.
    """
    remaining = deadline - (time.time() if now is None else now)
    return str(max(1, math.ceil(remaining * 1000)))


def request_headers(method: str, deadline: float, caller: str) -> dict[str, Any]:
    """Application headers of a request."""
    return {
        HEADER_VERSION: PROTOCOL_VERSION,
        HEADER_METHOD: method,
        HEADER_DEADLINE: deadline,
        HEADER_CALLER: caller,
    }


def request_body(
    args: Sequence[JsonValue], kwargs: Mapping[str, JsonValue]
) -> dict[str, Any]:
    """The JSON object a request carries."""
    return {"args": list(args), "kwargs": dict(kwargs)}


def parse_request_body(
    value: JsonValue,
) -> tuple[list[JsonValue], dict[str, JsonValue]]:
    """Positional and keyword arguments from a decoded request body."""
    if not isinstance(value, dict):
        raise SerializationError("request body must be a JSON object")
    args = value.get("args", [])
    kwargs = value.get("kwargs", {})
    if not isinstance(args, list):
        raise SerializationError("request 'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise SerializationError("request 'kwargs' must be a JSON object")
    return args, kwargs


def result_body(result: JsonValue) -> dict[str, Any]:
    """The JSON object of a successful reply."""
    return {"result": result, "error": None}


def error_body(error: Mapping[str, str]) -> dict[str, Any]:
    """The JSON object of a failed reply; ``error`` has type, message and traceback."""
    return {"result": None, "error": dict(error)}


def parse_reply_body(value: JsonValue, *, service: str = "") -> JsonValue:
    """The result carried by a decoded reply, or the RemoteError it carries raised."""
    if not isinstance(value, dict) or "result" not in value:
        raise MalformedRequestError(
            "MalformedReply", "reply body is not a result envelope", service=service
        )
    error = value.get("error")
    if error is None:
        return value["result"]
    if not isinstance(error, dict):
        error = {"type": "RemoteError", "message": str(error)}
    exc_type = str(error.get("type", "RemoteError"))
    error_class = REMOTE_ERROR_TYPES.get(exc_type, RemoteError)
    raise error_class(
        exc_type,
        str(error.get("message", "")),
        str(error.get("traceback", "")),
        service=service,
    )


@dataclasses.dataclass(frozen=True)
class Request:
    """A decoded request as a handler's context sees it."""

    service: str
    method: str
    args: list[JsonValue]
    kwargs: dict[str, JsonValue]
    correlation_id: str | None
    reply_to: str | None
    deadline: float | None
    caller: str
    redelivered: bool = False
    delivery_count: int = 1

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the caller gives up; None when no deadline was sent."""
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)
