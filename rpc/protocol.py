"""The wire contract: exchange, queue and routing-key names, headers and envelopes.

Every name that appears on the broker is built here, and ``docs/protocol.md`` describes
exactly this module, so that a client written in any language can call a service.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid
import zlib
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
#: Headers exchange in front of it for quorum queues: passes delivery-limit deaths on.
DEAD_LETTER_FILTER_EXCHANGE = "rpc.dead-letter.filter"
#: How long a retry queue outlives its TTL unused before RabbitMQ deletes it.
RETRY_QUEUE_IDLE_MS = 10 * 60 * 1000
#: Fanout exchange every worker listens on to describe the services it runs.
DISCOVERY_EXCHANGE = "rpc.discovery"
#: RabbitMQ's pseudo-queue for replies: no queue is declared per caller or per call.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

HEADER_VERSION = "x-rpc-version"
#: Name of the method to run; the routing key is for routing, this is authoritative.
HEADER_METHOD = "x-rpc-method"
#: Absolute deadline of the call, in seconds since the Unix epoch (a float).
HEADER_DEADLINE = "x-rpc-deadline"
#: Who made the call: a service name, or ``"client"``.
HEADER_CALLER = "x-rpc-caller"
#: Times this request was sent or delivered: above 1 once retried or redelivered.
HEADER_DELIVERY_COUNT = "x-rpc-delivery-count"
#: On a reply: the method is ``@rpc(idempotent=True)``, so callers may retry it.
HEADER_IDEMPOTENT = "x-rpc-idempotent"
#: Why a message was dead-lettered.
HEADER_DEATH_REASON = "x-rpc-death-reason"
#: What went wrong, in words, for a message dead-lettered by a worker.
HEADER_DEATH_DETAIL = "x-rpc-death-detail"
#: Set by RabbitMQ on quorum queue deliveries: times the message was returned before.
HEADER_BROKER_DELIVERY_COUNT = "x-delivery-count"
#: Set by RabbitMQ when it dead-letters a message: why (e.g. ``delivery_limit``).
HEADER_FIRST_DEATH_REASON = "x-first-death-reason"
#: Set by RabbitMQ when it dead-letters a message: the queue it was taken from.
HEADER_FIRST_DEATH_QUEUE = "x-first-death-queue"
#: On a message a worker dead-lettered: the queue it was taken from, where
#: ``rpc dead-letters --requeue`` sends it back (absent: the service queue).
HEADER_ORIGIN_QUEUE = "x-rpc-origin-queue"
#: On a message dead-lettered as malformed: its content header's payload as it came
#: (class, weight, body size, flags, properties), base64-encoded.
HEADER_RAW_PROPERTIES = "x-rpc-raw-properties"

#: Topic exchange events are published to, routed by ``<source>.<event type>``.
EVENTS_EXCHANGE = "rpc.events"
#: Service that dispatched an event.
HEADER_EVENT_SOURCE = "x-rpc-event-source"
#: Type of an event, e.g. ``orders.created``.
HEADER_EVENT_TYPE = "x-rpc-event-type"

#: Consistent-hash exchange of a sharded service (RabbitMQ plugin exchange type).
SHARD_EXCHANGE_TYPE = "x-consistent-hash"
#: Key a sharded call is routed by; the consistent-hash exchange hashes this header.
HEADER_SHARD_KEY = "x-rpc-shard-key"
#: Buckets each worker queue takes on the exchange's ring (its binding key). The
#: plugin's jump consistent hash spreads keys evenly with one bucket per worker.
SHARD_WEIGHT = 1

#: How an event handler's queue is shared (see :func:`event_queue`).
SERVICE_POOL = "service_pool"
BROADCAST = "broadcast"
SINGLETON = "singleton"
HANDLER_TYPES = (SERVICE_POOL, BROADCAST, SINGLETON)

_EVENT_QUEUE_PREFIX = "rpc-events"
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_METHOD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVENT_WORD = re.compile(r"^[A-Za-z0-9_-]+$")


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


def check_event_type(event_type: str) -> str:
    """Return ``event_type`` if it can be dispatched: dot-separated words."""
    if not isinstance(event_type, str) or not all(
        _EVENT_WORD.match(word) for word in event_type.split(".")
    ):
        raise ValueError(
            f"invalid event type {event_type!r}: use words of letters, digits, "
            "'_' and '-', separated by dots"
        )
    return event_type


def check_event_pattern(pattern: str) -> str:
    """Return ``pattern`` if it can filter event types: words, ``*`` (one word), ``#``.

    ``#`` stands for zero or more words, as in an AMQP topic binding.
    """
    if not isinstance(pattern, str) or not all(
        word in ("*", "#") or _EVENT_WORD.match(word) for word in pattern.split(".")
    ):
        raise ValueError(
            f"invalid event filter {pattern!r}: use dot-separated words, '*' for "
            "exactly one word and '#' for any number of words"
        )
    return pattern


def event_routing_key(source: str, event_type: str) -> str:
    """Routing key of an event on :data:`EVENTS_EXCHANGE`."""
    return f"{source}.{event_type}"


def event_binding(source: str, pattern: str) -> str:
    """Binding key that selects ``source``'s events whose type matches ``pattern``."""
    return f"{source}.{pattern}"


def event_queue(service: str, method: str, handler_type: str, instance: str) -> str:
    """Queue of one event handler.

    A service pool queue is durable and shared by every worker of the service, so
    each event reaches one of them and waits while none runs. A singleton queue is
    the same with RabbitMQ's single active consumer, so one worker at a time
    receives. A broadcast queue belongs to one worker process (``instance``):
    exclusive, deleted with its connection.
    """
    base = f"{_EVENT_QUEUE_PREFIX}.{service}.{method}"
    if handler_type == BROADCAST:
        return f"{base}.{instance}"
    if handler_type == SINGLETON:
        return f"{base}.singleton"
    return base


def event_queue_handler(queue: str) -> tuple[str, str] | None:
    """The (service, method) whose :func:`event_queue` ``queue`` is, else None."""
    prefix, _, rest = queue.partition(".")
    service, _, rest = rest.partition(".")
    method = rest.partition(".")[0]
    if prefix != _EVENT_QUEUE_PREFIX or not service or not method:
        return None
    return service, method


def owns_queue(service: str, queue: str) -> bool:
    """True if ``queue`` is one that workers of ``service`` consume from."""
    own = service_queue(service)
    if queue == own or queue.startswith(f"{own}."):
        return queue != dead_letter_queue(service)
    handler = event_queue_handler(queue)
    return handler is not None and handler[0] == service


def event_queue_arguments(handler_type: str) -> dict[str, Any]:
    """Queue arguments an event handler's queue is declared with."""
    if handler_type == SINGLETON:
        return {"x-single-active-consumer": True}
    return {}


def event_headers(source: str, event_type: str) -> dict[str, Any]:
    """Application headers of an event."""
    return {
        HEADER_VERSION: PROTOCOL_VERSION,
        HEADER_EVENT_SOURCE: source,
        HEADER_EVENT_TYPE: event_type,
    }


def cast_headers(method: str, caller: str) -> dict[str, Any]:
    """Application headers of a cast: a request without reply and without deadline."""
    return {
        HEADER_VERSION: PROTOCOL_VERSION,
        HEADER_METHOD: method,
        HEADER_CALLER: caller,
    }


def shard_exchange(service: str) -> str:
    """The consistent-hash exchange that spreads ``service``'s sharded calls."""
    return f"rpc.shard.{service}"


def shard_routing_key(service: str, method: str) -> str:
    """Routing key of a sharded call on :data:`RPC_EXCHANGE`.

    Three words, so the service queue's ``<service>.*`` binding does not match it;
    :func:`shard_binding` sends it on to the service's consistent-hash exchange.
    """
    return f"{service}.{method}.shard"


def shard_binding(service: str) -> str:
    """Binding key of a service's shard exchange on :data:`RPC_EXCHANGE`."""
    return f"{service}.*.shard"


def shard_queue(service: str, instance: str) -> str:
    """One worker's queue for sharded calls: exclusive to that worker process."""
    return f"rpc-{service}.shard.{instance}"


def service_queue(service: str) -> str:
    """The durable queue every worker of ``service`` consumes requests from."""
    return f"rpc-{service}"


def dead_letter_queue(service: str) -> str:
    """The queue an operator inspects for a service's poison messages."""
    return f"rpc-{service}.dead-letter"


def retry_queue(origin: str, delay_ms: int) -> str:
    """Where a failed event or cast waits ``delay_ms`` before going back to ``origin``.

    The wait is the queue's message TTL: when it passes, RabbitMQ dead-letters the
    message through the default exchange to ``origin`` (:func:`retry_queue_arguments`).
    """
    return f"{origin}.retry.{delay_ms}"


def retry_queue_arguments(
    origin: str, delay_ms: int, queue_type: str = "classic"
) -> dict[str, Any]:
    """``queue.declare`` arguments of :func:`retry_queue`, the same for every worker.

    The queue deletes itself once nobody has declared it for
    :data:`RETRY_QUEUE_IDLE_MS` longer than its TTL: workers declare it again well
    within that, so what waits in it is always moved back before it could go.

    With ``queue_type`` "quorum" it is a quorum queue (RabbitMQ 3.10+ gives those
    message TTLs), so a copy waiting in it survives the loss of any one node. Its
    dead-lettering is at-least-once: a copy leaves only once ``origin`` confirmed
    it, where the default (at-most-once) would drop it if ``origin`` could not take
    it right then. RabbitMQ allows that only with ``reject-publish`` overflow.
    """
    arguments: dict[str, Any] = {
        "x-queue-type": "classic",
        **typed_queue_arguments(queue_type),
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": origin,
        "x-expires": delay_ms + RETRY_QUEUE_IDLE_MS,
    }
    if queue_type == "quorum":
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    return arguments


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
    At most :data:`MAX_DEADLINE` seconds, so RabbitMQ always accepts it (it refuses
    the publish of anything past 2**32 - 1 ms and would close the channel).
    """
    remaining = deadline - (time.time() if now is None else now)
    if not math.isfinite(remaining):
        remaining = MAX_DEADLINE if remaining > 0 else 0.0
    return str(max(1, min(math.ceil(remaining * 1000), MAX_DEADLINE_MS)))


def request_headers(method: str, deadline: float, caller: str) -> dict[str, Any]:
    """Application headers of a request."""
    return {
        HEADER_VERSION: PROTOCOL_VERSION,
        HEADER_METHOD: method,
        HEADER_DEADLINE: deadline,
        HEADER_CALLER: caller,
    }


def reply_headers(*, idempotent: bool) -> dict[str, Any]:
    """Application headers of a reply: they tell the caller if it may retry the call."""
    return {HEADER_IDEMPOTENT: True} if idempotent else {}


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


def discovery_request() -> dict[str, Any]:
    """Body of a discovery request; every worker answers to its ``reply_to``."""
    return {"discover": PROTOCOL_VERSION}


def discovery_reply(
    worker: str, services: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """What one worker answers: its id, and ``ServiceDefinition.describe()`` of each."""
    return {"worker": worker, "services": [dict(service) for service in services]}


def merge_discovery(replies: Sequence[JsonValue]) -> dict[str, Any]:
    """Fold the replies of many workers into one listing, by service name.

    Each service lists its methods (and its event handlers and timers, when it has
    any) and how many workers answered for it. Replies that do not have the
    expected shape are skipped: one odd worker must not hide the rest.
    """
    merged: dict[str, Any] = {}
    for reply in replies:
        if not isinstance(reply, dict) or not isinstance(reply.get("services"), list):
            continue
        for service in reply["services"]:
            if not isinstance(service, dict):
                continue
            name = service.get("service")
            methods = service.get("methods")
            if not isinstance(name, str) or not isinstance(methods, dict):
                continue
            entry = merged.setdefault(name, {"methods": {}, "workers": 0})
            entry["workers"] += 1
            entry["methods"].update(methods)
            for part in ("events", "timers"):
                handlers = service.get(part)
                if isinstance(handlers, dict):
                    entry.setdefault(part, {}).update(handlers)
    return dict(sorted(merged.items()))


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
    #: The event's type, when this is an event handler's call.
    event_type: str | None = None
    #: Who the gateway vouches the caller is (an API token's name); None unless a
    #: trusted gateway sent it (see :func:`caller_identity`).
    caller_identity: str | None = None

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the caller gives up; None when no deadline was sent."""
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)


def fallback_reply_queue(client: str) -> str:
    """A caller's own reply queue, where the broker has no direct reply-to (memory).

    Exclusive to one connection, so a new name each time: one per proxy connection.
    """
    return f"rpc-reply-{client}-{uuid.uuid4().hex}"


#: Longest routing key AMQP carries: it is a short string.
MAX_ROUTING_KEY_BYTES = 255


def check_routing_key(service: str, method: str) -> str:
    """The routing key of ``service.method``, or ValueError if AMQP cannot carry it.

    Service and method names are checked first (see :func:`check_service_name` and
    :func:`check_method_name`); this checks only their length together.
    """
    key = routing_key(service, method)
    size = len(key.encode())
    if size > MAX_ROUTING_KEY_BYTES:
        raise ValueError(
            f"service and method names make a routing key of {size} bytes, over "
            f"the {MAX_ROUTING_KEY_BYTES} bytes AMQP allows"
        )
    return key


#: Longest a deadline may lie ahead, in seconds: later ones are cut to this.
MAX_DEADLINE = 24 * 3600.0
MAX_DEADLINE_MS = int(MAX_DEADLINE * 1000)


def parse_deadline(value: object, *, now: float | None = None) -> float | None:
    """The ``x-rpc-deadline`` of a request as epoch seconds, or None when absent.

    A number (int or float, not a bool) that is finite; one more than
    :data:`MAX_DEADLINE` ahead is cut to that, so no copy of the request ever gets
    an expiration RabbitMQ refuses. Anything else raises MalformedRequestError: a
    deadline that cannot be read must not turn into no deadline at all.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedRequestError(
            "MalformedRequestError",
            f"{HEADER_DEADLINE} must be a number of seconds since the epoch, "
            f"not {type(value).__name__}",
        )
    deadline = float(value)
    if not math.isfinite(deadline):
        raise MalformedRequestError(
            "MalformedRequestError", f"{HEADER_DEADLINE} must be finite, not {value}"
        )
    latest = (time.time() if now is None else now) + MAX_DEADLINE
    return min(deadline, latest)


def consumer_tag(service: str, part: str, owner: str) -> str:
    """The consumer tag of one of a worker's consumers: its service, what it
    consumes (empty for the service queue) and the worker instance that owns it.

    Tags only have to be unique on a channel; naming them after what they consume
    makes ``rabbitmqctl list_consumers`` readable.
    """
    return f"rpc-{service}-{part}-{owner}" if part else f"rpc-{service}-{owner}"


def typed_queue_arguments(
    queue_type: str, placement: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``queue.declare`` arguments that make a durable queue of ``queue_type``;
    a quorum queue takes the ``placement`` arguments (:func:`quorum_placement`)."""
    if queue_type == "quorum":
        return {"x-queue-type": "quorum", **(placement or {})}
    return {}


def timer_queue(service: str, method: str) -> str:
    """The durable queue whose token says which worker runs a cluster-wide timer."""
    return f"rpc-{service}.timer.{method}"


def timer_queue_arguments() -> dict[str, Any]:
    """Arguments of :func:`timer_queue`: one active consumer receives the token."""
    return {"x-single-active-consumer": True}


#: Who the gateway says an HTTP caller is (its token's name). Believed only on a
#: message whose ``user_id`` (checked by RabbitMQ against the publisher's login) is
#: one of the worker's ``trusted_identity_users``: see docs/security.md.
HEADER_CALLER_IDENTITY = "x-rpc-caller-identity"


def caller_identity(
    headers: Mapping[str, Any], user_id: object, trusted: Sequence[str]
) -> str | None:
    """The caller identity a worker may believe in a request, or None.

    RabbitMQ refuses a publish whose ``user_id`` property is not the publisher's
    own user name, so a header that came with a trusted ``user_id`` was set by a
    process logged in as that user (the gateway). The same header from anyone else
    is ignored, never trusted.
    """
    if not trusted or not isinstance(user_id, str) or user_id not in trusted:
        return None
    identity = headers.get(HEADER_CALLER_IDENTITY)
    return identity if isinstance(identity, str) and identity else None


def event_queue_prefix(service: str) -> str:
    """What the name of every :func:`event_queue` of ``service`` starts with."""
    return f"{_EVENT_QUEUE_PREFIX}.{service}."


# -- the result cache ------------------------------------------------------------

#: Header of a call to a cached method that acts on its cache entry instead.
HEADER_CACHE = "x-rpc-cache"
#: Drop the entry of the call's arguments; the handler does not run.
CACHE_INVALIDATE = "invalidate"
#: Run the handler whatever is cached, and store its result.
CACHE_REFRESH = "refresh"


#: ``queue.declare`` arguments that place a new quorum queue (RabbitMQ 3.10+): where
#: its leader goes, and on how many nodes it keeps a replica.
LEADER_LOCATOR_ARGUMENT = "x-queue-leader-locator"
GROUP_SIZE_ARGUMENT = "x-quorum-initial-group-size"


def quorum_placement(leader_locator: str, group_size: int) -> dict[str, Any]:
    """The placement arguments a worker adds to every quorum queue it declares.

    ``group_size`` 0 leaves the replica count to RabbitMQ (every node); an empty
    ``leader_locator`` leaves the leader to the broker's ``queue_leader_locator``.
    """
    arguments: dict[str, Any] = {}
    if leader_locator:
        arguments[LEADER_LOCATOR_ARGUMENT] = leader_locator
    if group_size:
        arguments[GROUP_SIZE_ARGUMENT] = group_size
    return arguments


def partition_queue(service: str, index: int) -> str:
    """One of the queues a partitioned service's calls and casts are spread over."""
    return f"{service_queue(service)}.partition.{index}"


def partition_routing_key(service: str, method: str, index: int) -> str:
    """Routing key of a request for partition ``index`` of ``service``.

    Three words, so neither the service queue's ``<service>.*`` binding nor the
    shard binding ``<service>.*.shard`` match it: only :func:`partition_binding`.
    """
    return f"{service}.{method}.partition-{index}"


def partition_binding(service: str, index: int) -> str:
    """Binding key of :func:`partition_queue`: every method, that partition only."""
    return f"{service}.*.partition-{index}"


def partition_for(key: str, count: int) -> int:
    """The partition of ``key`` among ``count``: CRC-32 of its UTF-8, modulo count.

    A plain checksum, so that a caller in any language picks the same partition.
    """
    return zlib.crc32(key.encode()) % count


# -- observability (docs/protocol.md, "Tracing and timing headers") ------------------

#: Header: when the caller published the message, seconds since the epoch (a
#: float). Set by callers that measure; the worker's queue wait is read from it.
HEADER_SENT_AT = "x-rpc-sent-at"
#: W3C Trace Context and Baggage headers, carried as AMQP string headers.
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
HEADER_BAGGAGE = "baggage"
TRACE_HEADERS = (HEADER_TRACEPARENT, HEADER_TRACESTATE, HEADER_BAGGAGE)


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(headers: Mapping[str, Any]) -> str | None:
    """The trace id a message's ``traceparent`` names, or None (absent, malformed)."""
    value = headers.get(HEADER_TRACEPARENT)
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value)
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)
