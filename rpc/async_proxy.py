"""asyncio callers: AsyncClusterProxy, AsyncServiceProxy and AsyncMethodProxy.

They share :class:`~rpc.client.BaseClusterProxy` with the threaded proxies: the same
connection with its I/O thread, the same request building and reply matching. Only
waiting differs: a reply read on the I/O thread settles an asyncio future through
``loop.call_soon_threadsafe``, so any number of calls await at once on one
connection without a thread each. While calls of a loop await, that loop reads the
replies itself (:meth:`rpc.transport.BrokerConnection.loop_reader`) and settles
them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from rpc.calls import (
    USE_DEFAULT,
    Observed,
    PreparedMessage,
    _UseDefault,
    cancelled,
    outcome_result,
    publish_message,
    reply_result,
)
from rpc.client import (
    BaseClusterProxy,
    BaseMethodProxy,
    BaseRpcFuture,
    BaseServiceProxy,
)
from rpc.discovery import (
    DISCOVERY_QUIET,
    DISCOVERY_WAIT,
    DiscoveryAnswers,
    read_answer,
)
from rpc.pending import timed_out
from rpc.serialization import JsonValue
from rpc.transport import Delivery

#: Seconds between two looks at a connection that is being re-established.
RECONNECT_POLL = 0.05


class _DeadlinePassed(Exception):
    """Set on a reply's future by its timer: only ever raised inside ``result()``."""


def _expire(future: asyncio.Future[Delivery]) -> None:
    if not future.done():
        future.set_exception(_DeadlinePassed())


class AsyncRpcFuture(BaseRpcFuture):
    """The pending result of one call, bound to the event loop that made it.

    ``await future`` (or ``await future.result()``) gives the result. Cancelling the
    awaiting task, or its deadline passing, removes the call from the proxy's pending
    map: a late reply is then dropped.
    """

    __slots__ = ("_loop",)

    _future: asyncio.Future[Delivery]

    def __init__(
        self,
        cluster: BaseClusterProxy,
        loop: asyncio.AbstractEventLoop,
        service: str,
        method: str,
        correlation_id: str,
        deadline: float,
        *,
        observed: Observed | None = None,
    ) -> None:
        # BaseRpcFuture.__init__ written out, for its own kind of future: going
        # through it would cost a call more for every call awaited.
        self._cluster = cluster
        self._loop = loop
        self._future = loop.create_future()
        self.service = service
        self.method = method
        self.correlation_id = correlation_id
        self.deadline = deadline
        self._observed = observed
        self._outcome = None

    async def result(self) -> JsonValue:
        """Wait for the reply and return its result, or raise what the call raised."""
        gave_up: Exception | None = None
        # While calls of this loop wait, the loop reads their replies itself.
        reading = self._cluster._connection.loop_reader(self._loop)
        reading.enter()
        future = self._future
        # One timer on the reply's own future, rather than asyncio.wait_for's second
        # future, callback and timer: this wait is paid by every call awaited.
        loop = self._loop
        expiry = loop.call_at(
            loop.time() + max(self.deadline - time.time(), 0.0), _expire, future
        )
        try:
            delivery = await future
        except _DeadlinePassed:
            # The reply may still come: it finds the future done and is dropped, and
            # the pending entry goes in ``finally``.
            gave_up = timed_out(self.label)
            raise gave_up from None
        finally:
            expiry.cancel()
            reading.leave()
            if self._cluster._forget(self.correlation_id):
                # Timed out or cancelled here: nobody else will settle this call.
                self._fail(gave_up or cancelled(self.label))
        # As in RpcFuture.result, written out: one call fewer per reply.
        outcome = self._outcome
        if outcome is None:
            return reply_result(delivery, self.service)
        return outcome_result(outcome)

    def __await__(self) -> Generator[Any, None, JsonValue]:
        return self.result().__await__()

    def _unsent(self) -> None:
        """The request was never sent: nobody will await this future.

        What the reading thread may settle it with meanwhile (a lost connection
        fails every call in flight) is retrieved here, or dropped on arrival, so
        asyncio does not log it as an exception never retrieved.
        """
        future = self._future
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()

    # -- called on the thread that read the reply: the I/O thread, or the loop's ---

    def _deliver(self, delivery: Delivery) -> None:
        if self._observed is not None and not self._observe_reply(delivery):
            return
        self._settle(delivery, None)

    def _fail(self, exc: Exception) -> None:
        if self._observed is not None and not self._observed.failed(exc):
            return
        self._settle(None, exc)

    def _settle(self, delivery: Delivery | None, exc: BaseException | None) -> None:
        if asyncio._get_running_loop() is self._loop:  # read on the loop itself
            self._set(delivery, exc)
            return
        # A closed loop raises RuntimeError: nobody is left to wait.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._set, delivery, exc)

    def _set(self, delivery: Delivery | None, exc: BaseException | None) -> None:
        if self._future.done():  # cancelled, or already failed
            return
        if exc is not None:
            self._future.set_exception(exc)
        else:
            self._future.set_result(delivery)  # type: ignore[arg-type]


class AsyncClusterProxy(BaseClusterProxy):
    """An asyncio client for every service on one broker.

    ``async with AsyncClusterProxy(url) as cluster: await cluster.greeter.hello("x")``.
    It works in any running event loop (aiohttp, Starlette, FastAPI...). Calls from
    many tasks share one connection; ``asyncio.gather`` of thousands of calls is fine.
    Publishing takes the connection's lock for a moment, so a publish can delay the
    loop briefly while the I/O thread reads a batch of frames.
    """

    async def start(self) -> AsyncClusterProxy:
        """Connect now (in a thread: connecting blocks); else the first call does."""
        if not self._started:
            await asyncio.get_running_loop().run_in_executor(
                None, self._start_connection
            )
        return self

    async def stop(self) -> None:
        """Close the connection; calls still awaiting fail with BrokerError."""
        await asyncio.get_running_loop().run_in_executor(None, self._stop_connection)

    async def __aenter__(self) -> AsyncClusterProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __getattr__(self, service: str) -> AsyncServiceProxy:
        if service.startswith("_"):
            raise AttributeError(service)
        return AsyncServiceProxy(self, service)

    def __getitem__(self, service: str) -> AsyncServiceProxy:
        return AsyncServiceProxy(self, service)

    # -- calls ---------------------------------------------------------------------

    async def call_async(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue] = (),
        kwargs: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
        shard_key: str | None = None,
    ) -> AsyncRpcFuture:
        """Publish a request and return its future without waiting for the reply."""
        call = self._calls.request(service, method, args, kwargs, timeout, shard_key)
        loop = asyncio.get_running_loop()
        future = AsyncRpcFuture(
            self,
            loop,
            service,
            method,
            call.correlation_id,
            call.deadline,
            observed=call.observed,
        )
        try:
            if not (self._started and self._connection.connected):
                await self._ensure_connected(call.deadline - call.created)
            self._send(call, future, idempotent=idempotent)
        except BaseException as exc:
            future._unsent()
            call.unsent(exc if isinstance(exc, Exception) else cancelled(call.label))
            raise
        return future

    async def call(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue] = (),
        kwargs: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
    ) -> JsonValue:
        """Call and await the result."""
        future = await self.call_async(
            service, method, args, kwargs, timeout=timeout, idempotent=idempotent
        )
        return await future.result()

    async def cast(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue] = (),
        kwargs: Mapping[str, JsonValue] | None = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
    ) -> None:
        """Send a request that wants no reply; return once the broker confirms it.

        As :meth:`rpc.ClusterProxy.cast`: UnknownServiceError when no queue is
        bound, BrokerError when the broker does not confirm in time.
        """
        await self._confirmed(self._calls.cast(service, method, args, kwargs), timeout)

    async def dispatch(
        self,
        source: str,
        event_type: str,
        payload: JsonValue = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
    ) -> None:
        """Publish an event as ``source``; return once the broker confirms it."""
        await self._confirmed(self._calls.event(source, event_type, payload), timeout)

    async def _confirmed(
        self, message: PreparedMessage, timeout: float | _UseDefault | None
    ) -> None:
        seconds = self._calls.seconds(timeout)
        try:
            await self._ensure_connected(seconds)
            confirm = asyncio.wrap_future(publish_message(self._connection, message))
            try:
                # shield: a caller giving up must not cancel the I/O thread's future.
                routed = await asyncio.wait_for(asyncio.shield(confirm), seconds)
            except asyncio.TimeoutError:
                raise message.not_confirmed(seconds) from None
        except BaseException as exc:
            message.unsent(
                exc if isinstance(exc, Exception) else cancelled(message.label)
            )
            raise
        message.confirmed(routed)

    async def discover(
        self, *, wait: float = DISCOVERY_WAIT, quiet: float = DISCOVERY_QUIET
    ) -> dict[str, Any]:
        """The services running now, with their methods, as their workers describe them.

        Every worker answers on the ``rpc.discovery`` fanout exchange. Nobody knows
        how many workers run, so answers are collected until ``quiet`` seconds pass
        without a new one, once every worker that answered the previous discovery
        has answered again; and for ``wait`` seconds at most, which is how long it
        takes when no worker runs, or when one that ran has gone.
        """
        await self._ensure_connected(wait)
        loop = asyncio.get_running_loop()
        answers = DiscoveryAnswers(
            self._known_workers, started=loop.time(), wait=wait, quiet=quiet
        )
        arrived = asyncio.Event()

        def add(value: JsonValue) -> None:
            answers.add(value, loop.time())
            arrived.set()

        def collect(delivery: Delivery) -> None:  # on the I/O thread
            value = read_answer(delivery)
            if value is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(add, value)

        correlation_id = self._send_discovery(collect)
        try:
            while (remaining := answers.done_at() - loop.time()) > 0:
                arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)
        finally:
            self._forget(correlation_id)
        return self._discovered(answers)

    async def _ensure_connected(self, within: float) -> None:
        if not self._started:
            await self.start()
        connection = self._connection
        # Reconnecting after a blip: wait for it, within the deadline. Polled on the
        # loop, not waited for in the executor: its few threads would all be taken
        # by calls made during an outage, and every other executor job would wait.
        give_up = time.monotonic() + min(within, self.config.connect_timeout)
        while not connection.connected and time.monotonic() < give_up:
            await asyncio.sleep(RECONNECT_POLL)
        # Still down: sending fails with BrokerError, or is queued for the next
        # connection when the call is idempotent, as with ClusterProxy.


class AsyncServiceProxy(BaseServiceProxy[AsyncClusterProxy]):
    """Awaitable calls to one service: ``await proxy.method(...)``."""

    def __getattr__(self, method: str) -> AsyncMethodProxy:
        if method.startswith("_"):
            raise AttributeError(method)
        return AsyncMethodProxy(
            self._cluster, self._service, method, timeout=self._timeout
        )


class AsyncMethodProxy(BaseMethodProxy[AsyncClusterProxy]):
    """One remote method: ``await`` a call, ``call_async``, ``cast`` or shard it."""

    async def __call__(self, *args: JsonValue, **kwargs: JsonValue) -> JsonValue:
        future = await self.call_async(*args, **kwargs)
        return await future.result()

    async def call_async(self, *args: JsonValue, **kwargs: JsonValue) -> AsyncRpcFuture:
        """Send the request and return an :class:`AsyncRpcFuture` to await later."""
        return await self._cluster.call_async(
            self.service,
            self.method,
            args,
            kwargs,
            timeout=self._timeout,
            idempotent=self._idempotent,
            shard_key=self._shard_key,
        )

    async def cast(self, *args: JsonValue, **kwargs: JsonValue) -> None:
        """Send the request, wanting no reply: :meth:`AsyncClusterProxy.cast`."""
        await self._cluster.cast(
            self.service, self.method, args, kwargs, timeout=self._timeout
        )

    def shard(self, key: object) -> AsyncMethodProxy:
        """This method routed by ``key``, as :meth:`rpc.MethodProxy.shard`."""
        return self._replace(shard_key=str(key))

    def with_options(
        self,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
        idempotent: bool | None = None,
    ) -> AsyncMethodProxy:
        """The same method with other options: ``.with_options(timeout=2)(...)``."""
        return self._replace(timeout=timeout, idempotent=idempotent)
