"""What both proxies share: the connection they own, and the call path through it.

:class:`BaseClusterProxy` is the glue between a :class:`~rpc.calls.CallBuilder`,
which builds requests, casts and events, the :class:`~rpc.pending.PendingCalls` that
match replies to their waiters, and the broker connection. The twins built on it,
:class:`rpc.ClusterProxy` and :class:`rpc.AsyncClusterProxy`, differ only in how
they wait (httpx's ``BaseClient``, ``Client`` and ``AsyncClient``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rpc import events, protocol, serialization
from rpc.calls import (
    USE_DEFAULT,
    CallBuilder,
    Observed,
    PreparedCall,
    _UseDefault,
    publish_request,
)
from rpc.config import Config
from rpc.discovery import DiscoveryAnswers
from rpc.errors import BrokerError
from rpc.middleware import ClientChain, Middleware, Outcome, load_middleware
from rpc.observability import client_metrics, middleware_for
from rpc.pending import PendingCall, PendingCalls, Waiter
from rpc.tls import connection_options
from rpc.transport import BrokerConnection, Delivery

if TYPE_CHECKING:
    from rpc.observability import MetricsRegistry
    from rpc.observability.metrics import ClientMetrics


class BaseClusterProxy:
    """What :class:`ClusterProxy` and its asyncio twin share: everything but waiting.

    It owns the connection; a :class:`~rpc.calls.CallBuilder` builds its requests,
    casts and events, and :class:`~rpc.pending.PendingCalls` matches replies,
    returns and disconnections to the waiter of each call. A waiter is whatever the
    twin waits on: an :class:`~rpc.proxy.RpcFuture`, or an
    :class:`~rpc.async_proxy.AsyncRpcFuture`.

    When the connection is lost, the replies of calls in flight are lost with it:
    those calls fail at once with :class:`BrokerError`, except idempotent ones, which
    are published again once the proxy has reconnected (within their deadline). A
    method is idempotent when the call says so (``with_options(idempotent=True)``)
    or, failing that, when the service's replies say it is declared
    ``@rpc(idempotent=True)``: the proxy remembers that per ``service.method``.

    ``middleware`` (then those ``Config.middleware`` names) see every call, cast and
    event sent: see :mod:`rpc.middleware`. A call sent again after a reconnection is
    still the same call to them. ``after_send`` runs on the thread that learns the
    outcome, for a call often the connection's I/O thread: it must be quick.

    ``metrics_registry`` (a prometheus-client ``CollectorRegistry``) gets the
    proxy's client metrics: calls, their durations and outcomes, sends, resends and
    the broker connection (see :mod:`rpc.observability.metrics`).
    """

    #: Workers that answered the last discovery: the next one waits for them.
    _known_workers: frozenset[str] = frozenset()

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        timeout: float | None = None,
        config: Config | None = None,
        name: str = "client",
        middleware: Iterable[Middleware] = (),
        metrics_registry: MetricsRegistry | None = None,
        user_id: str | None = None,
    ) -> None:
        base = config if config is not None else Config.load()
        #: Stamped on every request as its AMQP ``user_id``, which RabbitMQ checks
        #: is this connection's user: workers then believe the caller identity
        #: headers this proxy sets (the gateway's).
        self._user_id = user_id
        self.config = base.replace(broker_url=broker_url, default_timeout=timeout)
        self.name = name
        self._metrics: ClientMetrics | None = None
        watching: list[Middleware] = []
        if metrics_registry is not None:
            self._metrics = client_metrics(metrics_registry)
            watching.append(self._metrics)
        chain = ClientChain(
            [
                *watching,
                *middleware_for(self.config),
                *middleware,
                *load_middleware(self.config.middleware),
            ]
        )
        self._calls = CallBuilder(self.config, name, chain)
        self._pending = PendingCalls()
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
        self._pending.fail_all(BrokerError("the proxy was closed"))

    def _new_connection(self) -> BrokerConnection:
        return BrokerConnection(
            self.config.broker_url,
            name=f"{self.name}-proxy",
            heartbeat=self.config.heartbeat,
            connect_timeout=self.config.connect_timeout,
            on_connect=self._set_up,
            on_disconnect=self._disconnected,
            on_tick=self._expire,
            confirms=True,
            node_timeout=self.config.node_connect_timeout,
            listed_order=self.config.broker_order == "listed",
            **connection_options(self.config),
        )

    # -- sending -------------------------------------------------------------------

    def _send(
        self, call: PreparedCall, waiter: Waiter, *, idempotent: bool | None
    ) -> None:
        """Register ``waiter`` for the reply, then publish the request.

        ``idempotent`` (None: as the service declares) lets a call that cannot be
        published now, or whose connection is lost later, be sent again on the next
        connection instead of failing with BrokerError.
        """
        connection = self._connection
        entry = self._pending.add(call, waiter, idempotent)
        publish = connection.publish
        if self._user_id is not None:
            publish = functools.partial(publish, user_id=self._user_id)
        try:
            publish_request(publish, call, self._reply_to, 1)
        except BrokerError:
            if not self._pending.publish_failed(entry, retry=self._started):
                raise

    def _send_again(self, publish: Callable[..., None]) -> None:
        """Publish the idempotent calls a lost connection took with it."""
        if self._user_id is not None:
            publish = functools.partial(publish, user_id=self._user_id)
        reply_to = self._reply_to
        metrics = self._metrics

        def resend(entry: PendingCall) -> None:
            publish_request(publish, entry.call, reply_to, entry.attempts)
            if metrics is not None:
                metrics.resent(entry.call.service, entry.call.method)

        self._pending.send_again(resend)

    def _disconnected(self, exc: BaseException) -> None:
        self._pending.connection_lost(exc)
        if self._metrics is not None:
            self._metrics.disconnected()

    def _send_discovery(self, listener: Callable[[Delivery], None]) -> str:
        """Ask every running worker to describe itself; replies go to ``listener``.

        Returns the request's correlation id: :meth:`_forget` it when done.
        """
        correlation_id = uuid.uuid4().hex
        self._pending.listen(correlation_id, listener)
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
            self._pending.forget(correlation_id)
            raise
        return correlation_id

    def _discovered(self, answers: DiscoveryAnswers) -> dict[str, Any]:
        """The listing of a finished discovery; the next one waits for its workers."""
        self._known_workers = frozenset(answers.workers)
        return protocol.merge_discovery(answers.replies)

    def _forget(self, correlation_id: str) -> bool:
        """Stop waiting for a reply; True if the call was still waiting for one."""
        return self._pending.forget(correlation_id)

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
        # A reply to the direct reply-to address of a node that is gone makes
        # RabbitMQ 3.10 close the worker's whole connection; a private queue that
        # is gone just leaves the reply unrouted (see docs/cluster-faults.md).
        if connection.supports_direct_reply_to and not self.config.private_replies:
            self._reply_to = protocol.DIRECT_REPLY_TO
        else:
            self._reply_to = protocol.fallback_reply_queue(self.name)
            channel.queue_declare(
                queue=self._reply_to, exclusive=True, auto_delete=True, durable=False
            )
        pending = self._pending
        connection.consume(channel, self._reply_to, pending.on_reply, no_ack=True)
        connection.on_return(channel, pending.on_return)
        # Now that replies can arrive again: the idempotent calls the last
        # connection lost.
        self._send_again(
            lambda body, **options: connection.publish_on(channel, body, **options)
        )
        if self._metrics is not None:
            self._metrics.connected()

    def _expire(self) -> None:
        pending = self._pending
        pending.expire()
        if pending.has_resends:
            # Calls that failed to publish just as the connection came back.
            self._send_again(self._connection.publish)


class BaseRpcFuture:
    """What :class:`~rpc.RpcFuture` and its asyncio twin share: the call, its hooks.

    The call's fields and label, and decoding a reply for the client middlewares.
    Each twin writes out what touches its own kind of future: waiting, and settling
    in ``_deliver`` and ``_fail``, which run once per reply, where a shared method
    would cost a call. For the same reason the asyncio twin writes out its
    ``__init__``; the threaded one uses this one.
    """

    __slots__ = (
        "_cluster",
        "_future",
        "_observed",
        "_outcome",
        "correlation_id",
        "deadline",
        "method",
        "service",
    )

    _future: concurrent.futures.Future[Delivery] | asyncio.Future[Delivery]

    def __init__(
        self,
        cluster: BaseClusterProxy,
        service: str,
        method: str,
        correlation_id: str,
        deadline: float,
        *,
        observed: Observed | None = None,
    ) -> None:
        self._cluster = cluster
        self._future = self._new_future()
        self.service = service
        self.method = method
        self.correlation_id = correlation_id
        self.deadline = deadline
        self._observed = observed
        #: The decoded reply, when middlewares had it decoded as it arrived.
        self._outcome: Outcome | None = None

    def _new_future(self) -> concurrent.futures.Future[Delivery]:
        # The threaded twin binds the future's class itself here (a staticmethod),
        # so making one costs no call more than the future.
        raise NotImplementedError

    @property
    def label(self) -> str:
        return f"call {self.service}.{self.method}"

    def done(self) -> bool:
        return self._future.done()

    def _observe_reply(self, delivery: Delivery) -> bool:
        """Decode a reply for the middlewares; False if the caller gave up first.

        Only with middlewares (``_observed`` set): the decoded outcome is kept for
        the caller, who then decodes nothing again.
        """
        assert self._observed is not None
        outcome = self._observed.replied(delivery, self.service)
        if outcome is None:
            return False  # the caller gave up first: that was the outcome
        self._outcome = outcome
        return True


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
        partition: int | str | None = None,
    ) -> None:
        self._cluster = cluster
        self.service = service
        self.method = protocol.check_method_name(method)
        self._timeout = timeout
        self._idempotent = idempotent
        self._shard_key = shard_key
        self._partition = partition

    def _replace(
        self: _Method,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
        shard_key: str | None = None,
        partition: int | str | None = None,
    ) -> _Method:
        """A copy with the options given; those left out stay as they are here."""
        return type(self)(
            self._cluster,
            self.service,
            self.method,
            timeout=self._timeout if timeout is USE_DEFAULT else timeout,
            idempotent=self._idempotent if idempotent is None else idempotent,
            shard_key=self._shard_key if shard_key is None else shard_key,
            partition=self._partition if partition is None else partition,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.service}.{self.method}>"
