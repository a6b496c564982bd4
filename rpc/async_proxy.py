"""asyncio callers: AsyncClusterProxy, AsyncServiceProxy and AsyncMethodProxy.

They share :class:`~rpc.proxy.BaseClusterProxy` with the threaded proxies: the same
connection with its I/O thread, the same request building and reply matching. Only
waiting differs: a reply read on the I/O thread settles an asyncio future through
``loop.call_soon_threadsafe``, so any number of calls await at once on one
connection without a thread each. While calls of a loop await, that loop reads the
replies itself (:meth:`rpc.transport.BrokerConnection.loop_reader`) and settles
them directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from rpc import protocol, serialization
from rpc.errors import BrokerError, CallTimeoutError, SerializationError
from rpc.proxy import (
    USE_DEFAULT,
    BaseClusterProxy,
    BaseMethodProxy,
    BaseServiceProxy,
    _UseDefault,
    not_routed,
    reply_result,
)
from rpc.serialization import JsonValue
from rpc.transport import BrokerConnection, Delivery

#: Longest time :meth:`AsyncClusterProxy.discover` collects answers, by default.
DISCOVERY_WAIT = 0.5
#: Seconds without a new answer after which discovery stops early, by default.
DISCOVERY_QUIET = 0.1
#: Seconds between two looks at a connection that is being re-established.
RECONNECT_POLL = 0.05


class AsyncRpcFuture:
    """The pending result of one call, bound to the event loop that made it.

    ``await future`` (or ``await future.result()``) gives the result. Cancelling the
    awaiting task, or its deadline passing, removes the call from the proxy's pending
    map: a late reply is then dropped.
    """

    __slots__ = (
        "_cluster",
        "_future",
        "_loop",
        "correlation_id",
        "deadline",
        "method",
        "service",
    )

    def __init__(
        self,
        cluster: BaseClusterProxy,
        loop: asyncio.AbstractEventLoop,
        service: str,
        method: str,
        correlation_id: str,
        deadline: float,
    ) -> None:
        self._cluster = cluster
        self._loop = loop
        self._future: asyncio.Future[Delivery] = loop.create_future()
        self.service = service
        self.method = method
        self.correlation_id = correlation_id
        self.deadline = deadline

    @property
    def label(self) -> str:
        return f"call {self.service}.{self.method}"

    def done(self) -> bool:
        return self._future.done()

    async def result(self) -> JsonValue:
        """Wait for the reply and return its result, or raise what the call raised."""
        # While calls of this loop wait, the loop reads their replies itself.
        reading = self._cluster._connection.loop_reader(self._loop)
        reading.enter()
        try:
            remaining = max(self.deadline - time.time(), 0.0)
            delivery = await asyncio.wait_for(self._future, remaining)
        except asyncio.TimeoutError:
            # The reply may still come: a cancelled wait_for leaves no trace, and the
            # pending entry goes in ``finally``.
            raise CallTimeoutError(
                f"{self.label} got no reply before its deadline"
            ) from None
        finally:
            reading.leave()
            self._cluster._forget(self.correlation_id)
        return reply_result(delivery, self.service)

    def __await__(self) -> Generator[Any, None, JsonValue]:
        return self.result().__await__()

    # -- called on the thread that read the reply: the I/O thread, or the loop's ---

    def _deliver(self, delivery: Delivery) -> None:
        self._settle(delivery, None)

    def _fail(self, exc: BaseException) -> None:
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


class DiscoveryAnswers:
    """The answers to one discovery request, and when to stop waiting for more.

    I/O-free: times are whatever clock the caller reads, in seconds.
    """

    def __init__(
        self, known: frozenset[str], *, started: float, wait: float, quiet: float
    ) -> None:
        self.known = known
        self.give_up = started + max(wait, 0.0)
        self.quiet = max(quiet, 0.0)
        self.replies: list[JsonValue] = []
        self.workers: set[str] = set()
        self.last: float | None = None

    def add(self, reply: JsonValue, at: float) -> None:
        self.replies.append(reply)
        if isinstance(reply, dict) and isinstance(reply.get("worker"), str):
            self.workers.add(reply["worker"])
        self.last = at

    def done_at(self) -> float:
        """When to stop waiting: ``quiet`` after the last answer, else the bound.

        Only once every worker known from the previous discovery has answered: one
        that is slow to answer is not left out just because the others were quick.
        """
        if self.last is None or not self.known <= self.workers:
            return self.give_up
        return min(self.give_up, self.last + self.quiet)


class AsyncClusterProxy(BaseClusterProxy):
    """An asyncio client for every service on one broker.

    ``async with AsyncClusterProxy(url) as cluster: await cluster.greeter.hello("x")``.
    It works in any running event loop (aiohttp, Starlette, FastAPI...). Calls from
    many tasks share one connection; ``asyncio.gather`` of thousands of calls is fine.
    Publishing takes the connection's lock for a moment, so a publish can delay the
    loop briefly while the I/O thread reads a batch of frames.
    """

    #: Workers that answered the last discovery: the next one waits for them.
    _known_workers: frozenset[str] = frozenset()

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
        call = self._prepare(service, method, args, kwargs, timeout, shard_key)
        loop = asyncio.get_running_loop()
        future = AsyncRpcFuture(
            self, loop, service, method, call.correlation_id, call.deadline
        )
        await self._ensure_connected(call.deadline - call.created)
        self._send(call, future, idempotent=idempotent)
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
        label = f"cast {service}.{method}"
        publish = self._cast_publisher(service, method, args, kwargs)
        if not await self._confirmed(label, timeout, publish):
            raise not_routed(service, label)

    async def dispatch(
        self,
        source: str,
        event_type: str,
        payload: JsonValue = None,
        *,
        timeout: float | _UseDefault | None = USE_DEFAULT,
    ) -> None:
        """Publish an event as ``source``; return once the broker confirms it."""
        label = f"event {source}.{event_type}"
        await self._confirmed(
            label, timeout, self._event_publisher(source, event_type, payload)
        )

    async def _confirmed(
        self,
        label: str,
        timeout: float | _UseDefault | None,
        publish: Callable[[BrokerConnection], concurrent.futures.Future[bool]],
    ) -> bool:
        seconds = self._confirm_seconds(timeout)
        await self._ensure_connected(seconds)
        confirm = asyncio.wrap_future(publish(self._connection))
        try:
            # shield: a caller giving up must not cancel the I/O thread's future.
            return await asyncio.wait_for(asyncio.shield(confirm), seconds)
        except asyncio.TimeoutError:
            raise BrokerError(
                f"{label}: the broker did not confirm it within {seconds}s"
            ) from None

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
            try:
                value = serialization.decode(delivery.body, delivery.content_type)
            except SerializationError:
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(add, value)

        correlation_id = uuid.uuid4().hex
        self._send_discovery(correlation_id, collect)
        try:
            while (remaining := answers.done_at() - loop.time()) > 0:
                arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)
        finally:
            self._forget(correlation_id)
        self._known_workers = frozenset(answers.workers)
        return protocol.merge_discovery(answers.replies)

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
