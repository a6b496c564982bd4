"""Callers: ClusterProxy, ServiceProxy and MethodProxy, with futures and deadlines."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar

from rpc import events, protocol, scatter, serialization
from rpc.config import Config
from rpc.context import current_call
from rpc.errors import (
    BrokerError,
    CallTimeoutError,
    RpcError,
    UnknownServiceError,
)
from rpc.serialization import JsonValue
from rpc.transport import BrokerConnection, Delivery

log = logging.getLogger(__name__)

RESENT = "%s: sent again after a reconnection (attempt %d)"


class _UseDefault:
    def __repr__(self) -> str:
        return "USE_DEFAULT"


#: "Use the proxy's setting": the default of every per-call option.
USE_DEFAULT: Final = _UseDefault()


class Waiter(Protocol):
    """What waits for one call's reply; the reading thread settles it exactly once."""

    service: str
    deadline: float

    @property
    def label(self) -> str: ...

    def _deliver(self, delivery: Delivery) -> None: ...

    def _fail(self, exc: BaseException) -> None: ...


@dataclasses.dataclass(frozen=True)
class PreparedCall:
    """A request ready to publish: encoded, addressed and given its deadline."""

    service: str
    method: str
    correlation_id: str
    deadline: float
    created: float
    body: bytes
    headers: dict[str, Any]
    routing_key: str


@dataclasses.dataclass(eq=False)
class _Pending:
    """A call published and not yet answered, with what it takes to send it again."""

    waiter: Waiter
    call: PreparedCall
    #: What the caller said; None means "as the service declares in its replies".
    idempotent: bool | None
    attempts: int = 1


def reply_result(delivery: Delivery, service: str) -> JsonValue:
    """The result a reply carries, or the remote error it carries raised."""
    value = serialization.decode(delivery.body, delivery.content_type)
    return protocol.parse_reply_body(value, service=service)


def not_routed(service: str, label: str) -> UnknownServiceError:
    """The error of a cast or call that the broker could not route to a queue."""
    return UnknownServiceError(
        f"no service {service!r} is listening: the broker could not route "
        f"{label} to any queue"
    )


class RpcFuture:
    """The pending result of one call; :meth:`result` waits for it.

    The reply is decoded in the thread that asks for it, not on the I/O thread.
    """

    __slots__ = (
        "_cluster",
        "_future",
        "correlation_id",
        "deadline",
        "method",
        "service",
    )

    def __init__(
        self,
        cluster: BaseClusterProxy,
        service: str,
        method: str,
        correlation_id: str,
        deadline: float,
    ) -> None:
        self._cluster = cluster
        self._future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()
        self.service = service
        self.method = method
        self.correlation_id = correlation_id
        self.deadline = deadline

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> JsonValue:
        """Wait for the reply and return its result, or raise what the call raised.

        ``timeout`` bounds this wait only; the call's own deadline always applies.
        """
        remaining = self.deadline - time.time()
        wait = remaining if timeout is None else min(timeout, remaining)
        future = self._future
        if not future.done() and wait > 0:
            # Read the reply on this thread when nobody else is reading: it then
            # crosses no thread on its way here. Else wait for it to be handed over.
            began = time.monotonic()
            if self._cluster._connection.read_until(future.done, wait):
                wait -= time.monotonic() - began
        try:
            delivery = future.result(timeout=max(wait, 0))
        except concurrent.futures.TimeoutError:
            if timeout is not None and timeout < remaining:
                raise TimeoutError(f"{self.label} not done after {timeout}s") from None
            self._cluster._forget(self.correlation_id)
            raise CallTimeoutError(
                f"{self.label} got no reply before its deadline"
            ) from None
        return reply_result(delivery, self.service)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception :meth:`result` would raise, or None."""
        try:
            self.result(timeout)
        except Exception as exc:
            return exc
        return None

    def cancel(self) -> bool:
        """Stop waiting: the reply is dropped if it comes. False if already done.

        A request already taken by a worker still runs there.
        """
        if self._future.done():
            return False
        self._cluster._forget(self.correlation_id)
        self._fail(concurrent.futures.CancelledError(f"{self.label} was cancelled"))
        return True

    def add_done_callback(self, callback: Callable[[RpcFuture], None]) -> None:
        """Call ``callback(self)`` once a reply or a failure arrives.

        It runs on the thread that read the reply: the connection's I/O thread, or
        another caller's thread waiting in :meth:`result`, which reads the socket
        while nobody else does. It must return quickly and never wait for a reply.
        """
        self._future.add_done_callback(lambda _: callback(self))

    @property
    def label(self) -> str:
        return f"call {self.service}.{self.method}"

    def _deliver(self, delivery: Delivery) -> None:
        if not self._future.done():
            self._future.set_result(delivery)

    def _fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)


class BaseClusterProxy:
    """What :class:`ClusterProxy` and its asyncio twin share: everything but waiting.

    It owns the connection and the map of pending calls, builds requests (arguments,
    deadline, headers) and matches replies, returns and disconnections to the waiter
    of each call. A waiter is whatever the twin waits on: an :class:`RpcFuture` here,
    an asyncio future in :mod:`rpc.async_proxy`. Every callback runs on the thread
    reading the connection (its I/O thread, or a caller of :meth:`RpcFuture.result`
    reading its own reply) and only hands results over.

    When the connection is lost, the replies of calls in flight are lost with it:
    those calls fail at once with :class:`BrokerError`, except idempotent ones, which
    are published again once the proxy has reconnected (within their deadline). A
    method is idempotent when the call says so (``with_options(idempotent=True)``)
    or, failing that, when the service's replies say it is declared
    ``@rpc(idempotent=True)``: the proxy remembers that per ``service.method``.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        timeout: float | None = None,
        config: Config | None = None,
        name: str = "client",
    ) -> None:
        base = config if config is not None else Config.load()
        self.config = base.replace(broker_url=broker_url, default_timeout=timeout)
        self.name = name
        self._pending: dict[str, _Pending] = {}
        #: Idempotent calls that lost their connection and wait for the next one.
        self._resend: dict[str, _Pending] = {}
        self._calls_lock = threading.Lock()
        #: ``(service, method)`` whose replies said they are idempotent.
        self._idempotent_methods: set[tuple[str, str]] = set()
        # Requests answered by many replies (discovery): correlation id -> callback.
        self._listeners: dict[str, Callable[[Delivery], None]] = {}
        # Correlation ids: a random prefix per proxy and a counter. uuid4() per call
        # costs a getrandom() syscall; ids only need to be unique among our calls.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._start_lock = threading.Lock()
        self._started = False
        self._connection = self._new_connection()
        self._reply_to = protocol.DIRECT_REPLY_TO

    @property
    def started(self) -> bool:
        """True once connected, until stopped; reconnection is then automatic."""
        return self._started

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up."""
        return self._started and self._connection.connected

    def _start_connection(self) -> None:
        with self._start_lock:
            if not self._started:
                if self._connection.stopped:
                    self._connection = self._new_connection()
                self._connection.start()
                self._started = True

    def _stop_connection(self) -> None:
        with self._start_lock:
            started, self._started = self._started, False
        if started:
            self._connection.stop()
        self._fail_all(BrokerError("the proxy was closed"))

    def _new_connection(self) -> BrokerConnection:
        return BrokerConnection(
            self.config.broker_url,
            name=f"{self.name}-proxy",
            heartbeat=self.config.heartbeat,
            connect_timeout=self.config.connect_timeout,
            on_connect=self._set_up,
            on_disconnect=self._connection_lost,
            on_tick=self._expire,
            confirms=True,
        )

    # -- building and sending requests (I/O-free but for the publish) ----------------

    def _prepare(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue],
        kwargs: Mapping[str, JsonValue] | None,
        timeout: float | _UseDefault | None,
        shard_key: str | None = None,
    ) -> PreparedCall:
        """Check names, fix the deadline and encode the body; raises before any I/O.

        With ``shard_key``, the request goes to the worker of the service that owns
        that key on the service's consistent-hash ring.
        """
        protocol.check_service_name(service)
        protocol.check_method_name(method)
        now = time.time()
        deadline = self._deadline(now, timeout)
        if deadline <= now:
            raise CallTimeoutError(
                f"call {service}.{method}: the caller's deadline has already passed"
            )
        body = serialization.encode(
            protocol.request_body(args, kwargs or {}),
            limit=self.config.max_message_bytes,
        )
        headers = protocol.request_headers(method, deadline, self._caller())
        key = protocol.routing_key(service, method)
        if shard_key is not None:
            headers[protocol.HEADER_SHARD_KEY] = str(shard_key)
            key = protocol.shard_routing_key(service, method)
        return PreparedCall(
            service=service,
            method=method,
            correlation_id=f"{self._id_prefix}{next(self._ids):x}",
            deadline=deadline,
            created=now,
            body=body,
            headers=headers,
            routing_key=key,
        )

    def _caller(self) -> str:
        context = current_call()
        return context.service if context is not None else self.name

    def _cast_publisher(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue],
        kwargs: Mapping[str, JsonValue] | None,
    ) -> Callable[[BrokerConnection], concurrent.futures.Future[bool]]:
        """Encode a cast now; the result publishes it with a confirm when called."""
        protocol.check_service_name(service)
        protocol.check_method_name(method)
        body = serialization.encode(
            protocol.request_body(args, kwargs or {}),
            limit=self.config.max_message_bytes,
        )
        headers = protocol.cast_headers(method, self._caller())
        return lambda connection: connection.publish_confirmed(
            body,
            exchange=protocol.RPC_EXCHANGE,
            routing_key=protocol.routing_key(service, method),
            content_type=serialization.CONTENT_TYPE,
            headers=headers,
            mandatory=True,
            delivery_mode=2,
        )

    def _event_publisher(
        self, source: str, event_type: str, payload: JsonValue
    ) -> Callable[[BrokerConnection], concurrent.futures.Future[bool]]:
        limit = self.config.max_message_bytes
        return lambda connection: events.publish_event(
            connection, source, event_type, payload, limit=limit
        )

    def _confirm_seconds(self, timeout: float | _UseDefault | None) -> float:
        return (
            self.config.default_timeout
            if timeout is USE_DEFAULT or timeout is None
            else float(timeout)  # type: ignore[arg-type]
        )

    def _send(
        self, call: PreparedCall, waiter: Waiter, *, idempotent: bool | None
    ) -> None:
        """Register ``waiter`` for the reply, then publish the request.

        ``idempotent`` (None: as the service declares) lets a call that cannot be
        published now, or whose connection is lost later, be sent again on the next
        connection instead of failing with BrokerError.
        """
        connection = self._connection
        entry = _Pending(waiter, call, idempotent)
        with self._calls_lock:
            self._pending[call.correlation_id] = entry
        try:
            self._publish(entry, connection.publish)
        except BrokerError:
            with self._calls_lock:
                self._pending.pop(call.correlation_id, None)
                if call.correlation_id in self._resend:
                    return  # the lost connection took it over: sent on reconnection
                if not (self._retryable(entry) and self._started):
                    raise
                # Sent by the I/O thread once connected again (or failed at the
                # deadline).
                entry.attempts += 1
                self._resend[call.correlation_id] = entry

    def _publish(self, entry: _Pending, publish: Callable[..., None]) -> None:
        call = entry.call
        headers = call.headers
        if entry.attempts > 1:
            # The handler's context reports it as redelivered: it may have run.
            headers = {**headers, protocol.HEADER_DELIVERY_COUNT: entry.attempts}
        publish(
            call.body,
            exchange=protocol.RPC_EXCHANGE,
            routing_key=call.routing_key,
            content_type=serialization.CONTENT_TYPE,
            headers=headers,
            mandatory=True,
            correlation_id=call.correlation_id,
            reply_to=self._reply_to,
            expiration=protocol.expiration_ms(call.deadline),
            delivery_mode=1,
        )

    def _retryable(self, entry: _Pending) -> bool:
        if entry.idempotent is not None:
            return entry.idempotent
        call = entry.call
        return (call.service, call.method) in self._idempotent_methods

    def _send_again(self, publish: Callable[..., None]) -> None:
        """Publish the idempotent calls a lost connection took with it."""
        with self._calls_lock:
            waiting, self._resend = self._resend, {}
        now = time.time()
        for correlation_id, entry in list(waiting.items()):
            waiter = entry.waiter
            if entry.call.deadline <= now:
                del waiting[correlation_id]
                waiter._fail(
                    CallTimeoutError(f"{waiter.label} got no reply before its deadline")
                )
                continue
            with self._calls_lock:
                self._pending[correlation_id] = entry
            try:
                self._publish(entry, publish)
            except BaseException:
                # This connection failed too: keep the rest for the next one.
                with self._calls_lock:
                    self._pending.pop(correlation_id, None)
                    self._resend.update(waiting)
                raise
            del waiting[correlation_id]
            log.info(RESENT, waiter.label, entry.attempts)

    def _send_discovery(
        self, correlation_id: str, listener: Callable[[Delivery], None]
    ) -> None:
        """Ask every running worker to describe itself; replies go to ``listener``."""
        self._listeners[correlation_id] = listener
        try:
            self._connection.publish(
                serialization.encode(protocol.discovery_request()),
                exchange=protocol.DISCOVERY_EXCHANGE,
                routing_key="",
                content_type=serialization.CONTENT_TYPE,
                correlation_id=correlation_id,
                reply_to=self._reply_to,
                delivery_mode=1,
            )
        except BrokerError:
            self._listeners.pop(correlation_id, None)
            raise

    def _deadline(self, now: float, timeout: float | _UseDefault | None) -> float:
        seconds = (
            self.config.default_timeout
            if timeout is USE_DEFAULT or timeout is None
            else float(timeout)  # type: ignore[arg-type]
        )
        deadline = now + seconds
        context = current_call()
        if context is not None and context.deadline is not None:
            # A nested call never outlives the call it serves.
            deadline = min(deadline, context.deadline)
        return deadline

    def _forget(self, correlation_id: str) -> None:
        with self._calls_lock:
            self._pending.pop(correlation_id, None)
            self._resend.pop(correlation_id, None)
        self._listeners.pop(correlation_id, None)

    # -- callbacks on the thread reading the connection --------------------------------

    def _set_up(self, channel: Any) -> None:
        connection = self._connection
        channel.exchange_declare(
            exchange=protocol.RPC_EXCHANGE,
            type="topic",
            durable=True,
            auto_delete=False,
        )
        events.declare_exchange(channel)
        # Publishing to a missing exchange would close the channel: declare it too.
        channel.exchange_declare(
            exchange=protocol.DISCOVERY_EXCHANGE,
            type="fanout",
            durable=True,
            auto_delete=False,
        )
        if connection.supports_direct_reply_to:
            self._reply_to = protocol.DIRECT_REPLY_TO
        else:
            self._reply_to = f"rpc-reply-{self.name}-{uuid.uuid4().hex}"
            channel.queue_declare(
                queue=self._reply_to, exclusive=True, auto_delete=True, durable=False
            )
        connection.consume(channel, self._reply_to, self._on_reply, no_ack=True)
        connection.on_return(channel, self._on_return)
        # Now that replies can arrive again: the idempotent calls the last
        # connection lost.
        self._send_again(
            lambda body, **options: connection.publish_on(channel, body, **options)
        )

    def _on_reply(self, delivery: Delivery) -> None:
        correlation_id = delivery.correlation_id or ""
        with self._calls_lock:
            entry = self._pending.pop(correlation_id, None)
        if entry is None:
            listener = self._listeners.get(correlation_id)
            if listener is not None:
                listener(delivery)
                return
            log.debug("dropping a reply nobody waits for: %s", correlation_id)
            return
        # Learn from every reply, so that a method redeployed without
        # idempotent=True stops being retried.
        key = (entry.call.service, entry.call.method)
        if delivery.headers.get(protocol.HEADER_IDEMPOTENT) is True:
            self._idempotent_methods.add(key)
        else:
            self._idempotent_methods.discard(key)
        entry.waiter._deliver(delivery)

    def _on_return(self, delivery: Delivery) -> None:
        with self._calls_lock:
            entry = self._pending.pop(delivery.correlation_id or "", None)
        if entry is not None:
            waiter = entry.waiter
            waiter._fail(not_routed(waiter.service, waiter.label))

    def _connection_lost(self, exc: BaseException) -> None:
        # Direct reply-to replies for these calls die with the channel: fail them now
        # rather than let the caller wait for its timeout, or keep the idempotent
        # ones to publish again once reconnected.
        error = BrokerError(
            f"connection to the broker lost while the call was in flight: {exc}"
        )
        now = time.time()
        failed: list[_Pending] = []
        with self._calls_lock:
            pending, self._pending = self._pending, {}
            for correlation_id, entry in pending.items():
                if self._retryable(entry) and entry.call.deadline > now:
                    entry.attempts += 1
                    self._resend[correlation_id] = entry
                else:
                    failed.append(entry)
        for entry in failed:
            entry.waiter._fail(error)

    def _fail_all(self, exc: RpcError) -> None:
        with self._calls_lock:
            pending, self._pending = self._pending, {}
            waiting, self._resend = self._resend, {}
        for entry in [*pending.values(), *waiting.values()]:
            entry.waiter._fail(exc)

    def _expire(self) -> None:
        now = time.time()
        with self._calls_lock:
            expired = [
                self._pending.pop(correlation_id)
                for correlation_id, entry in list(self._pending.items())
                if entry.call.deadline < now
            ]
            leftover = bool(self._resend)
        for entry in expired:
            entry.waiter._fail(
                CallTimeoutError(
                    f"{entry.waiter.label} got no reply before its deadline"
                )
            )
        if leftover:
            # Calls that failed to publish just as the connection came back.
            self._send_again(self._connection.publish)


_Cluster = TypeVar("_Cluster", bound=BaseClusterProxy)
_Service = TypeVar("_Service", bound="BaseServiceProxy[Any]")
_Method = TypeVar("_Method", bound="BaseMethodProxy[Any]")


class BaseServiceProxy(Generic[_Cluster]):
    """What :class:`ServiceProxy` and its asyncio twin share: service and defaults."""

    def __init__(
        self,
        cluster: _Cluster,
        service: str,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
    ) -> None:
        self._cluster = cluster
        self._service = protocol.check_service_name(service)
        self._timeout = timeout

    def with_options(
        self: _Service, *, timeout: float | _UseDefault | None = USE_DEFAULT
    ) -> _Service:
        """The same service with other defaults: ``svc.with_options(timeout=5)``."""
        return type(self)(self._cluster, self._service, timeout=timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._service}>"


class BaseMethodProxy(Generic[_Cluster]):
    """What :class:`MethodProxy` and its asyncio twin share: a method, its options."""

    def __init__(
        self,
        cluster: _Cluster,
        service: str,
        method: str,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
        shard_key: str | None = None,
    ) -> None:
        self._cluster = cluster
        self.service = service
        self.method = protocol.check_method_name(method)
        self._timeout = timeout
        self._idempotent = idempotent
        self._shard_key = shard_key

    def _replace(
        self: _Method,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
        shard_key: str | None = None,
    ) -> _Method:
        """A copy with the options given; those left out stay as they are here."""
        return type(self)(
            self._cluster,
            self.service,
            self.method,
            timeout=self._timeout if timeout is USE_DEFAULT else timeout,
            idempotent=self._idempotent if idempotent is None else idempotent,
            shard_key=self._shard_key if shard_key is None else shard_key,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.service}.{self.method}>"


class ClusterProxy(BaseClusterProxy):
    """A client for every service on one broker: ``cluster.greeter.hello(name="x")``.

    One connection serves every thread; concurrent calls are multiplexed on it and
    matched to their replies by correlation id. Replies come on RabbitMQ's direct
    reply-to, so no queue is declared per call or per caller.
    """

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> ClusterProxy:
        """Connect now; otherwise the first call connects."""
        self._start_connection()
        return self

    def stop(self) -> None:
        """Close the connection; calls still waiting fail with BrokerError."""
        self._stop_connection()

    def __enter__(self) -> ClusterProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __getattr__(self, service: str) -> ServiceProxy:
        if service.startswith("_"):
            raise AttributeError(service)
        proxy = ServiceProxy(self, service)
        # Kept as an attribute: the next ``cluster.<service>`` is a plain lookup.
        self.__dict__[service] = proxy
        return proxy

    def __getitem__(self, service: str) -> ServiceProxy:
        return ServiceProxy(self, service)

    # -- calls ---------------------------------------------------------------------

    def call_async(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue] = (),
        kwargs: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
        shard_key: str | None = None,
    ) -> RpcFuture:
        """Publish a request and return its future at once.

        With ``shard_key``, the request goes to the worker of the service that owns
        that key on the service's consistent-hash ring. ``idempotent`` overrides
        what the service declares (see the class docstring).

        Raises:
            BrokerError: not connected (an idempotent call waits for the next
                connection instead, within its deadline).
        """
        call = self._prepare(service, method, args, kwargs, timeout, shard_key)
        future = RpcFuture(self, service, method, call.correlation_id, call.deadline)
        if not self._started:
            self.start()
        connection = self._connection
        if not connection.connected:
            # Reconnecting after a blip: wait for it, within this call's deadline.
            connection.wait_connected(
                min(call.deadline - call.created, self.config.connect_timeout)
            )
        self._send(call, future, idempotent=idempotent)
        return future

    def call(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue] = (),
        kwargs: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
    ) -> JsonValue:
        """Call and wait for the result."""
        return self.call_async(
            service, method, args, kwargs, timeout=timeout, idempotent=idempotent
        ).result()

    def cast(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue] = (),
        kwargs: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
    ) -> None:
        """Send a request that wants no reply; return once the broker has it.

        Exactly one worker of the service runs it, whenever one is free: the
        message is persistent and has no deadline, so it waits in the durable queue
        while no worker runs. Returns when the broker confirms the publish (after
        writing it to disk); ``timeout`` bounds that wait. A handler's failure is
        never reported back: the worker runs the cast again, up to
        ``delivery_limit`` times, then moves it to the service's dead-letter queue.

        Raises:
            UnknownServiceError: no queue is bound for the service.
            BrokerError: the broker refused the message, did not confirm it in
                time, or the connection was lost first (it may then have arrived:
                cast again only what is safe to run twice).
        """
        label = f"cast {service}.{method}"
        publish = self._cast_publisher(service, method, args, kwargs)
        if not self._confirmed(label, timeout, publish):
            raise not_routed(service, label)

    def dispatch(
        self,
        source: str,
        event_type: str,
        payload: JsonValue = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
    ) -> None:
        """Publish an event as ``source``; return once the broker has it.

        Every subscribing handler gets its own copy (none, if nobody subscribes).

        Raises:
            ValueError: ``source`` or ``event_type`` cannot be used on the wire.
            BrokerError: as for :meth:`cast`.
        """
        label = f"event {source}.{event_type}"
        self._confirmed(
            label, timeout, self._event_publisher(source, event_type, payload)
        )

    def _confirmed(
        self,
        label: str,
        timeout: float | _UseDefault | None,
        publish: Callable[[BrokerConnection], concurrent.futures.Future[bool]],
    ) -> bool:
        # Publisher confirms: wait here, in the caller's thread, for the broker's
        # ack for this message, reading it ourselves when nobody else reads.
        seconds = self._confirm_seconds(timeout)
        if not self._started:
            self.start()
        connection = self._connection
        if not connection.connected:
            connection.wait_connected(min(seconds, self.config.connect_timeout))
        confirm = publish(connection)
        began = time.monotonic()
        left = seconds
        if connection.read_until(confirm.done, seconds):
            left = max(seconds - (time.monotonic() - began), 0)
        try:
            return confirm.result(timeout=left)
        except concurrent.futures.TimeoutError:
            raise BrokerError(
                f"{label}: the broker did not confirm it within {seconds}s"
            ) from None


class ServiceProxy(BaseServiceProxy[ClusterProxy]):
    """Calls to one service: ``proxy.method(...)``, from ``cluster.<service>``."""

    def __getattr__(self, method: str) -> MethodProxy:
        if method.startswith("_"):
            raise AttributeError(method)
        proxy = MethodProxy(self._cluster, self._service, method, timeout=self._timeout)
        self.__dict__[method] = proxy  # as in ClusterProxy.__getattr__
        return proxy


class MethodProxy(BaseMethodProxy[ClusterProxy]):
    """One remote method: call it, ``call_async``, ``cast`` or ``map`` it, shard it."""

    def __call__(self, *args: JsonValue, **kwargs: JsonValue) -> JsonValue:
        return self.call_async(*args, **kwargs).result()

    def call_async(self, *args: JsonValue, **kwargs: JsonValue) -> RpcFuture:
        """Send the request and return an :class:`RpcFuture` without waiting."""
        return self._submit(args, kwargs)

    def cast(self, *args: JsonValue, **kwargs: JsonValue) -> None:
        """Send the request without wanting a reply; see :meth:`ClusterProxy.cast`."""
        self._cluster.cast(
            self.service, self.method, args, kwargs, timeout=self._timeout
        )

    def shard(self, key: object) -> MethodProxy:
        """This method routed by ``key``: ``cache.get.shard("user:42")("user:42")``.

        Calls with the same key reach the same worker while the service's set of
        workers does not change; the service must take sharded calls (one of its
        methods declares ``@rpc(shard_by=...)``), or the call fails with
        UnknownServiceError.
        """
        return self._replace(shard_key=str(key))

    def map(
        self,
        iterable: Iterable[JsonValue],
        *,
        max_in_flight: int = scatter.DEFAULT_MAX_IN_FLIGHT,
        return_exceptions: bool = False,
    ) -> Iterator[JsonValue]:
        """Call the method once per item (its one argument), concurrently.

        Like ``multiprocessing.Pool.imap`` across machines: results come in input
        order while up to ``max_in_flight`` calls run on the service's workers.
        The first failure raises and cancels the rest, unless
        ``return_exceptions=True`` puts the exception in that item's place.
        """
        return scatter.gather(
            self._submit,
            (((item,), {}) for item in iterable),
            max_in_flight=max_in_flight,
            return_exceptions=return_exceptions,
        )

    def starmap(
        self,
        iterable: Iterable[Sequence[JsonValue] | Mapping[str, JsonValue]],
        *,
        max_in_flight: int = scatter.DEFAULT_MAX_IN_FLIGHT,
        return_exceptions: bool = False,
    ) -> Iterator[JsonValue]:
        """As :meth:`map`, each item a list of arguments or a dict of keyword ones."""
        return scatter.gather(
            self._submit,
            (scatter.as_arguments(item) for item in iterable),
            max_in_flight=max_in_flight,
            return_exceptions=return_exceptions,
        )

    def _submit(
        self, args: Sequence[JsonValue], kwargs: Mapping[str, JsonValue]
    ) -> RpcFuture:
        return self._cluster.call_async(
            self.service,
            self.method,
            args,
            kwargs,
            timeout=self._timeout,
            idempotent=self._idempotent,
            shard_key=self._shard_key,
        )

    def with_options(
        self,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
    ) -> MethodProxy:
        """The same method with other options: ``.with_options(timeout=2)(...)``.

        ``idempotent=True`` lets the proxy send the call again after a connection
        loss even if the service does not declare it, ``False`` never; left out, the
        service's ``@rpc(idempotent=True)`` decides, as its replies report it.
        """
        return self._replace(timeout=timeout, idempotent=idempotent)
