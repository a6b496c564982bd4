"""Callers: ClusterProxy, ServiceProxy and MethodProxy, with futures and deadlines."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from rpc import scatter
from rpc.calls import (
    USE_DEFAULT,
    PreparedMessage,
    _UseDefault,
    cancelled,
    outcome_result,
    publish_message,
    reply_result,
)
from rpc.client import BaseClusterProxy as BaseClusterProxy
from rpc.client import BaseMethodProxy, BaseRpcFuture, BaseServiceProxy
from rpc.discovery import DISCOVERY_QUIET, DISCOVERY_WAIT, DiscoveryAnswers, read_answer
from rpc.pending import timed_out
from rpc.serialization import JsonValue
from rpc.transport import BrokerConnection, Delivery


class RpcFuture(BaseRpcFuture):
    """The pending result of one call; :meth:`result` waits for it.

    The reply is decoded in the thread that asks for it, not on the I/O thread;
    with client middlewares, on the thread that reads it, so that their
    ``after_send`` hooks run even if nobody ever asks.
    """

    __slots__ = ()

    _future: concurrent.futures.Future[Delivery]
    _new_future: staticmethod[[], concurrent.futures.Future[Delivery]] = staticmethod(
        concurrent.futures.Future
    )

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
            error = timed_out(self.label)
            if self._cluster._forget(self.correlation_id):
                self._fail(error)
            raise error from None
        # As in AsyncRpcFuture.result, written out: one call fewer per reply.
        outcome = self._outcome
        if outcome is None:
            return reply_result(delivery, self.service)
        return outcome_result(outcome)

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
        self._fail(cancelled(self.label))
        return True

    def add_done_callback(self, callback: Callable[[RpcFuture], None]) -> None:
        """Call ``callback(self)`` once a reply or a failure arrives.

        It runs on the thread that read the reply: the connection's I/O thread, or
        another caller's thread waiting in :meth:`result`, which reads the socket
        while nobody else does. It must return quickly and never wait for a reply.
        """
        self._future.add_done_callback(lambda _: callback(self))

    # -- called on the thread that read the reply ------------------------------------

    def _deliver(self, delivery: Delivery) -> None:
        if self._observed is not None and not self._observe_reply(delivery):
            return
        if not self._future.done():
            self._future.set_result(delivery)

    def _fail(self, exc: Exception) -> None:
        if self._observed is not None and not self._observed.failed(exc):
            return
        if not self._future.done():
            self._future.set_exception(exc)


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
        partition: int | str | None = None,
    ) -> RpcFuture:
        """Publish a request and return its future at once.

        With ``shard_key``, the request goes to the worker of the service that owns
        that key on the service's consistent-hash ring. ``idempotent`` overrides
        what the service declares (see the class docstring).

        Raises:
            BrokerError: not connected (an idempotent call waits for the next
                connection instead, within its deadline).
        """
        call = self._calls.request(
            service, method, args, kwargs, timeout, shard_key, partition
        )
        future = RpcFuture(
            self,
            service,
            method,
            call.correlation_id,
            call.deadline,
            observed=call.observed,
        )
        try:
            if not self._started:
                self.start()
            connection = self._connection
            if not connection.connected:
                # Reconnecting after a blip: wait for it, within this call's deadline.
                connection.wait_connected(
                    min(call.deadline - call.created, self.config.connect_timeout)
                )
            self._send(call, future, idempotent=idempotent)
        except Exception as exc:
            call.unsent(exc)
            raise
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
        partition: int | str | None = None,
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
        self._confirmed(
            self._calls.cast(service, method, args, kwargs, partition), timeout
        )

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
        self._confirmed(self._calls.event(source, event_type, payload), timeout)

    def discover(
        self, *, wait: float = DISCOVERY_WAIT, quiet: float = DISCOVERY_QUIET
    ) -> dict[str, Any]:
        """The services running now, with their methods, as their workers describe them.

        As :meth:`rpc.AsyncClusterProxy.discover`: answers are collected until
        ``quiet`` seconds pass without a new one, once every worker that answered the
        previous discovery has answered again; and for ``wait`` seconds at most.
        """
        answers = self._collect_answers(wait, quiet)
        return self._discovered(answers)

    def workers(
        self, *, wait: float = DISCOVERY_WAIT, quiet: float = DISCOVERY_QUIET
    ) -> list[dict[str, Any]]:
        """Each running worker's own answer: its id, services and live counters.

        Collected as :meth:`discover` does; ``rpc status`` shows them.
        """
        answers = self._collect_answers(wait, quiet)
        self._discovered(answers)
        return [reply for reply in answers.replies if isinstance(reply, dict)]

    def _collect_answers(self, wait: float, quiet: float) -> DiscoveryAnswers:
        connection = self._connected_within(wait)
        lock = threading.Lock()
        arrived = threading.Event()
        answers = DiscoveryAnswers(
            self._known_workers, started=time.monotonic(), wait=wait, quiet=quiet
        )

        def collect(delivery: Delivery) -> None:  # on the thread reading
            value = read_answer(delivery)
            if value is not None:
                with lock:
                    answers.add(value, time.monotonic())
                arrived.set()

        correlation_id = self._send_discovery(collect)
        try:
            while True:
                arrived.clear()
                with lock:
                    remaining = answers.done_at() - time.monotonic()
                if remaining <= 0:
                    break
                # Read the answers on this thread when nobody else is reading.
                if not connection.read_until(arrived.is_set, remaining):
                    arrived.wait(remaining)
        finally:
            self._forget(correlation_id)
        with lock:
            return answers

    def _connected_within(self, seconds: float) -> BrokerConnection:
        """The connection, started if need be; after a blip, waited for a while."""
        if not self._started:
            self.start()
        connection = self._connection
        if not connection.connected:
            # Reconnecting after a blip: wait for it, within the caller's time.
            connection.wait_connected(min(seconds, self.config.connect_timeout))
        # Still down: sending fails with BrokerError, or is queued for the next
        # connection when the call is idempotent.
        return connection

    def _confirmed(
        self, message: PreparedMessage, timeout: float | _UseDefault | None
    ) -> None:
        # Publisher confirms: wait here, in the caller's thread, for the broker's
        # ack for this message, reading it ourselves when nobody else reads.
        seconds = self._calls.seconds(timeout)
        try:
            connection = self._connected_within(seconds)
            confirm = publish_message(connection, message)
            began = time.monotonic()
            left = seconds
            if connection.read_until(confirm.done, seconds):
                left = max(seconds - (time.monotonic() - began), 0)
            try:
                routed = confirm.result(timeout=left)
            except concurrent.futures.TimeoutError:
                raise message.not_confirmed(seconds) from None
        except Exception as exc:
            message.unsent(exc)
            raise
        message.confirmed(routed)


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
            self.service,
            self.method,
            args,
            kwargs,
            timeout=self._timeout,
            partition=self._partition,
        )

    def shard(self, key: object) -> MethodProxy:
        """This method routed by ``key``: ``cache.get.shard("user:42")("user:42")``.

        Calls with the same key reach the same worker while the service's set of
        workers does not change; the service must take sharded calls (one of its
        methods declares ``@rpc(shard_by=...)``), or the call fails with
        UnknownServiceError.
        """
        return self._replace(shard_key=str(key))

    def partition(self, which: int | str) -> MethodProxy:
        """This method sent to one partition of a partitioned service (see
        ``Config.partitions``): ``which`` is its index, or a key that always picks
        the same one. For a service that is not partitioned, it changes nothing.
        """
        return self._replace(partition=which)

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
            partition=self._partition,
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
