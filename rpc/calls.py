"""Building a call, cast or event: names checked, deadline, body, headers, routing.

Shared by the threaded and the asyncio proxies, and I/O-free: publishing takes the
connection it is given. The client middlewares' ``before_send`` hooks run here, as
part of building, so that the headers they add are in the message; :class:`Observed`
runs their ``after_send`` hooks once, on whichever thread learns the outcome.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeAlias

from rpc import events, protocol, serialization
from rpc.config import Config
from rpc.context import current_call
from rpc.errors import BrokerError, CallTimeoutError, UnknownServiceError
from rpc.middleware import ClientCall, ClientChain, Outcome
from rpc.serialization import JsonValue
from rpc.transport import BrokerConnection, Delivery


class _UseDefault:
    def __repr__(self) -> str:
        return "USE_DEFAULT"


#: "Use the proxy's setting": the default of every per-call option.
USE_DEFAULT: Final = _UseDefault()

Timeout: TypeAlias = float | _UseDefault | None


def reply_result(delivery: Delivery, service: str) -> JsonValue:
    """The result a reply carries, or the remote error it carries raised."""
    value = serialization.decode(delivery.body, delivery.content_type)
    return protocol.parse_reply_body(value, service=service)


def not_routed(service: str, label: str) -> UnknownServiceError:
    """The error of a cast or call that the broker could not route to a queue."""
    return UnknownServiceError(
        f"no service {service!r}: no worker of it has declared its queue, so the "
        f"broker could not route {label} to any"
    )


def cancelled(label: str) -> concurrent.futures.CancelledError:
    """The outcome of a call, cast or event whose caller stopped waiting for it."""
    return concurrent.futures.CancelledError(f"{label} was cancelled")


def outcome_result(outcome: Outcome) -> JsonValue:
    """The result an outcome holds, or its error raised."""
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


class Observed:
    """A send the client middlewares watch: their ``after_send`` hooks run once.

    Several threads may learn an outcome at about the same time (a reply read while
    the caller gives up at its deadline): the first to claim it runs the hooks, and
    the others let it be.
    """

    __slots__ = ("_chain", "_once", "call")

    def __init__(self, chain: ClientChain, call: ClientCall) -> None:
        self._chain = chain
        self.call = call
        self._once = threading.Lock()

    def finish(self, outcome: Outcome) -> bool:
        """Run the ``after_send`` hooks with ``outcome``; False if already done."""
        if not self._once.acquire(blocking=False):
            return False
        self._chain.after(self.call, outcome)
        return True

    def failed(self, error: Exception) -> bool:
        """:meth:`finish` with an error."""
        return self.finish(Outcome(error=error))

    def replied(self, delivery: Delivery, service: str) -> Outcome | None:
        """Decode a reply and run the hooks on it; None if the outcome was known."""
        if not self._once.acquire(blocking=False):
            return None
        try:
            outcome = Outcome(result=reply_result(delivery, service))
        except Exception as exc:
            outcome = Outcome(error=exc)
        self._chain.after(self.call, outcome)
        return outcome


# Not frozen: a frozen dataclass pays a call per field, and these are made per call.
@dataclasses.dataclass(slots=True, eq=False)
class Prepared:
    """A request, cast or event ready to publish: encoded and addressed."""

    #: The service called or cast to, or the event's source.
    service: str
    #: The method called or cast to, or the event's type.
    method: str
    body: bytes
    headers: dict[str, Any]
    routing_key: str
    #: Set when client middlewares are configured.
    observed: Observed | None = None

    #: "call", "cast" or "event".
    kind: ClassVar[str]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.service}.{self.method}"

    def unsent(self, exc: Exception) -> None:
        """Not sent, or not confirmed: that is its outcome for the middlewares."""
        if self.observed is not None:
            self.observed.failed(exc)


@dataclasses.dataclass(slots=True, eq=False, kw_only=True)
class PreparedCall(Prepared):
    """A request ready to publish: encoded, addressed and given its deadline."""

    kind = "call"
    correlation_id: str
    deadline: float
    created: float


class PreparedMessage(Prepared):
    """A cast or an event ready to publish with a confirm."""

    __slots__ = ()

    #: Where and how each is published.
    exchange: ClassVar[str]
    #: A cast must reach a queue; an event nobody subscribes to is simply dropped.
    mandatory: ClassVar[bool]

    def confirmed(self, routed: bool) -> None:
        """What the broker's confirm means; UnknownServiceError for a lost cast."""
        error = None
        if self.mandatory and not routed:
            error = not_routed(self.service, self.label)
        if self.observed is not None:
            self.observed.finish(Outcome(error=error))
        if error is not None:
            raise error

    def not_confirmed(self, seconds: float) -> BrokerError:
        """The error of a confirm that did not come within ``seconds``."""
        return BrokerError(
            f"{self.label}: the broker did not confirm it within {seconds}s"
        )


class PreparedCast(PreparedMessage):
    """A request that wants no reply: persistent, mandatory, no deadline."""

    __slots__ = ()
    kind = "cast"
    exchange = protocol.RPC_EXCHANGE
    mandatory = True


class PreparedEvent(PreparedMessage):
    """An event, for every handler subscribed to its source and type."""

    __slots__ = ()
    kind = "event"
    exchange = protocol.EVENTS_EXCHANGE
    mandatory = False


def publish_request(
    publish: Callable[..., None], call: PreparedCall, reply_to: str, attempts: int
) -> None:
    """Publish a request with ``publish`` (one of the connection's publish methods)."""
    headers = call.headers
    if attempts > 1:
        # The handler's context reports it as redelivered: it may have run.
        headers = {**headers, protocol.HEADER_DELIVERY_COUNT: attempts}
    publish(
        call.body,
        exchange=protocol.RPC_EXCHANGE,
        routing_key=call.routing_key,
        content_type=serialization.CONTENT_TYPE,
        headers=headers,
        mandatory=True,
        correlation_id=call.correlation_id,
        reply_to=reply_to,
        expiration=protocol.expiration_ms(call.deadline),
        delivery_mode=1,
    )


def publish_message(
    connection: BrokerConnection, message: PreparedMessage
) -> concurrent.futures.Future[bool]:
    """Publish a cast or an event, persistent; the future is the broker's confirm."""
    return connection.publish_confirmed(
        message.body,
        exchange=message.exchange,
        routing_key=message.routing_key,
        content_type=serialization.CONTENT_TYPE,
        headers=message.headers,
        mandatory=message.mandatory,
        delivery_mode=2,
    )


class CallBuilder:
    """Builds the requests, casts and events of one proxy; raises before any I/O.

    Correlation ids are a random prefix per proxy and a counter: ``uuid4()`` per call
    costs a ``getrandom()`` syscall, and ids only need to be unique among our calls.
    """

    def __init__(self, config: Config, name: str, chain: ClientChain) -> None:
        self.config = config
        self.name = name
        self.chain = chain
        #: Checked once here: with no middleware, nothing below allocates for them.
        self._observing = bool(chain)
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        #: Partitioned services, by name: empty, and never looked at, unless set.
        self._partitions = dict(config.partitions)

    def request(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue],
        kwargs: Mapping[str, JsonValue] | None,
        timeout: Timeout,
        shard_key: str | None = None,
        partition: int | str | None = None,
    ) -> PreparedCall:
        """Check names, fix the deadline and encode the body.

        With ``shard_key``, the request goes to the worker of the service that owns
        that key on the service's consistent-hash ring.
        """
        protocol.check_service_name(service)
        protocol.check_method_name(method)
        now = time.time()
        deadline = self.deadline(now, timeout)
        if deadline <= now:
            raise CallTimeoutError(
                f"call {service}.{method}: the caller's deadline has already passed"
            )
        body = serialization.encode(
            protocol.request_body(args, kwargs or {}),
            limit=self.config.max_message_bytes,
        )
        headers = protocol.request_headers(method, deadline, self.caller())
        key = _routing_key(service, method)
        if self._partitions and service in self._partitions:
            key = self.partition_key(service, method, partition)
        if shard_key is not None:
            headers[protocol.HEADER_SHARD_KEY] = str(shard_key)
            key = protocol.shard_routing_key(service, method)
            _fits(key)
        correlation_id = f"{self._id_prefix}{next(self._ids):x}"
        observed = None
        if self._observing:
            client_call = ClientCall(
                service,
                method,
                "call",
                args,
                kwargs or {},
                correlation_id=correlation_id,
            )
            observed, headers = self._before(client_call, headers)
        return PreparedCall(
            service=service,
            method=method,
            correlation_id=correlation_id,
            deadline=deadline,
            created=now,
            body=body,
            headers=headers,
            routing_key=key,
            observed=observed,
        )

    def cast(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue],
        kwargs: Mapping[str, JsonValue] | None,
        partition: int | str | None = None,
    ) -> PreparedMessage:
        """A request that wants no reply: persistent, mandatory, no deadline."""
        protocol.check_service_name(service)
        protocol.check_method_name(method)
        key = _routing_key(service, method)
        if self._partitions and service in self._partitions:
            key = self.partition_key(service, method, partition)
        body = serialization.encode(
            protocol.request_body(args, kwargs or {}),
            limit=self.config.max_message_bytes,
        )
        headers = protocol.cast_headers(method, self.caller())
        observed = None
        if self._observing:
            call = ClientCall(service, method, "cast", args, kwargs or {})
            observed, headers = self._before(call, headers)
        return PreparedCast(service, method, body, headers, key, observed)

    def event(
        self, source: str, event_type: str, payload: JsonValue
    ) -> PreparedMessage:
        """An event of ``source``: raises ValueError or SerializationError."""
        body, headers = events.encode_event(
            source, event_type, payload, limit=self.config.max_message_bytes
        )
        key = protocol.event_routing_key(source, event_type)
        _fits(key)
        observed = None
        if self._observing:
            call = ClientCall(source, event_type, "event", (payload,), {})
            observed, headers = self._before(call, headers)
        return PreparedEvent(source, event_type, body, headers, key, observed)

    def _before(
        self, call: ClientCall, headers: dict[str, Any]
    ) -> tuple[Observed, dict[str, Any]]:
        """Run the ``before_send`` hooks; the headers they added go under ours."""
        observed = Observed(self.chain, call)
        try:
            self.chain.before(call)
        except Exception as exc:
            # A refused send is an outcome too: the hooks that saw it start see it end.
            observed.failed(exc)
            raise
        if call.headers:
            # The framework's own headers win: a middleware cannot break the protocol.
            headers = {**call.headers, **headers}
        return observed, headers

    def partition_key(
        self, service: str, method: str, partition: int | str | None = None
    ) -> str:
        """The routing key of a request to one partition of ``service``.

        The caller's pick: an index (modulo the count), a key (the same key, the
        same partition: :func:`rpc.protocol.partition_for`), or None for a random
        one, which spreads the load evenly over the partitions' queues, and so over
        the nodes their leaders are on (see docs/cluster.md).
        """
        count = self._partitions[service]
        if partition is None:
            index = random.randrange(count)
        elif isinstance(partition, int):
            index = partition % count
        else:
            index = protocol.partition_for(partition, count)
        key = protocol.partition_routing_key(service, method, index)
        _fits(key)
        return key

    def caller(self) -> str:
        """Who makes the call: the service being served, else the proxy's name."""
        context = current_call()
        return context.service if context is not None else self.name

    def seconds(self, timeout: Timeout) -> float:
        """The timeout a call or confirm waits: its own, else the proxy's."""
        if timeout is USE_DEFAULT or timeout is None:
            return self.config.default_timeout
        return float(timeout)  # type: ignore[arg-type]

    def deadline(self, now: float, timeout: Timeout) -> float:
        """The absolute deadline of a call made at ``now``."""
        # As seconds() does, written out: this is on every call's path.
        deadline = now + (
            self.config.default_timeout
            if timeout is USE_DEFAULT or timeout is None
            else float(timeout)  # type: ignore[arg-type]
        )
        context = current_call()
        if context is not None and context.deadline is not None:
            # A nested call never outlives the call it serves.
            deadline = min(deadline, context.deadline)
        return deadline


def _routing_key(service: str, method: str) -> str:
    """The routing key of ``service.method``; ValueError past what AMQP carries."""
    key = protocol.routing_key(service, method)
    # Checked names are ASCII: their length in characters is their length in bytes.
    if len(key) > protocol.MAX_ROUTING_KEY_BYTES:
        protocol.check_routing_key(service, method)
    return key


def _fits(key: str) -> None:
    """ValueError if ``key`` is longer than an AMQP routing key can be."""
    size = len(key.encode())
    if size > protocol.MAX_ROUTING_KEY_BYTES:
        raise ValueError(
            f"routing key {key[:40]!r}... is {size} bytes, over the "
            f"{protocol.MAX_ROUTING_KEY_BYTES} bytes AMQP allows"
        )
