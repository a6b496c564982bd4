"""Dispatch: each admitted delivery onto a handler thread, or onto the event loop
for an ``async def`` handler, counted while in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from rpc.config import Config
from rpc.context import CallContext
from rpc.errors import BrokerError
from rpc.protocol import Request
from rpc.serialization import JsonValue
from rpc.service import Handler, ServiceDefinition
from rpc.transport import BrokerConnection, Delivery
from rpc.worker.handler_pool import HandlerPool
from rpc.worker.invoke import Invoker

log = logging.getLogger(__name__)

COULD_NOT_ANSWER = "could not answer %s: %s"


class Work:
    """One delivery on its way to a handler, resolved once when it arrived.

    It is the handler run's :class:`~rpc.worker.invoke.Origin`.
    """

    __slots__ = ("consumer", "context", "delivery", "handler", "service")

    #: Set once admitted: the context its handler runs in.
    context: CallContext

    def __init__(
        self,
        consumer: WorkConsumer,
        delivery: Delivery,
        service: ServiceDefinition,
        handler: Handler | None,
    ) -> None:
        self.consumer = consumer
        self.delivery = delivery
        self.service = service
        #: None for a request to a method the service does not have.
        self.handler = handler

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.delivery.headers

    def kind(self, request: Request) -> str:
        return self.consumer.kind(request)


class _Raised:
    """What a handler raised, on its way to being settled."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class WorkConsumer(Protocol):
    """What a consumer does with its deliveries: admit, then settle the outcome."""

    def admit(self, work: Work) -> Request | None:
        """The request to run, or None when the delivery was settled already."""

    def kind(self, request: Request) -> str:
        """The run's kind for middlewares: "call", "cast", "event" or "timer"."""

    def succeeded(self, work: Work, result: JsonValue) -> None:
        """The handler returned ``result``: reply, or ack."""

    def failed(self, work: Work, request: Request, exc: Exception) -> None:
        """The handler raised: reply with the error, or apply the failure policy."""


class Dispatcher:
    """Runs work on the handler threads or the event loop; knows what is in flight."""

    def __init__(
        self,
        config: Config,
        connection: BrokerConnection,
        invoker: Invoker,
        *,
        has_async: bool,
        name: str,
    ) -> None:
        self._connection = connection
        self._invoker = invoker
        self._name = name
        #: Some handler is ``async def``: the runner has an event loop for them.
        self.has_async = has_async
        self.pool: HandlerPool[Work] = HandlerPool(
            config.max_workers, self.run, connection=connection
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._async_slots = asyncio.Semaphore(config.max_async)
        self._in_flight = 0
        self._in_flight_lock = threading.Condition()
        #: Handler runs finished, and those of them that raised.
        self.served = 0
        self.errors = 0
        #: Set once the runner stops: a failed reply or ack is expected then.
        self.stopping = False

    @property
    def in_flight(self) -> int:
        """Deliveries taken from the broker and not yet settled."""
        return self._in_flight

    def start_loop(self) -> None:
        """Start the event loop of ``async def`` handlers, if there are any."""
        if self.has_async and self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever,
                name=f"rpc-loop-{self._name}",
                daemon=True,
            )
            self._loop_thread.start()

    def start_threads(self) -> None:
        """Start the handler threads now rather than at the first delivery."""
        self.pool.start()

    def submit(self, work: Work, *, asynchronous: bool) -> None:
        """Run ``work`` on the loop (``asynchronous`` handler) or a handler thread."""
        with self._in_flight_lock:
            self._in_flight += 1
        loop = self._loop
        if asynchronous and loop is not None:
            asyncio.run_coroutine_threadsafe(self.run_async(work), loop)
        else:
            self.pool.submit(work)

    # Only the handler's call differs between the two twins: admission and settling
    # are shared, and never raise.

    def run(self, work: Work) -> None:
        """Admit, run and settle one delivery, on a handler thread."""
        failed: bool | None = None
        try:
            handler = self._admit(work, asynchronous=False)
            if handler is None:
                return
            try:
                outcome = self._invoker.invoke(work, handler, work.context)
                failed = False
            except Exception as exc:
                outcome = _Raised(exc)
                failed = True
            self._settle(work, outcome)
        finally:
            self._done(failed)

    async def run_async(self, work: Work) -> None:
        """:meth:`run` for an ``async def`` handler: the same steps, awaited."""
        failed: bool | None = None
        try:
            async with self._async_slots:
                handler = self._admit(work, asynchronous=True)
                if handler is None:
                    return
                try:
                    outcome = await self._invoker.invoke_async(
                        work, handler, work.context
                    )
                    failed = False
                except Exception as exc:
                    outcome = _Raised(exc)
                    failed = True
                self._settle(work, outcome)
        finally:
            self._done(failed)

    def _admit(self, work: Work, *, asynchronous: bool) -> Handler | None:
        """The handler to run, its context set on ``work``; else None, settled."""
        try:
            request = work.consumer.admit(work)
            handler = work.handler
            if request is None or handler is None:
                return None
            work.context = CallContext(
                work.service.name, request, asynchronous=asynchronous
            )
        except Exception as exc:
            self._unsettled(work, exc)
            return None
        return handler

    def _settle(self, work: Work, outcome: JsonValue | _Raised) -> None:
        """Reply or ack what the handler returned; what it raised, as a failure."""
        try:
            if isinstance(outcome, _Raised):
                work.consumer.failed(work, work.context.request, outcome.error)
            else:
                work.consumer.succeeded(work, outcome)
        except Exception as exc:
            self._unsettled(work, exc)

    def _unsettled(self, work: Work, exc: Exception) -> None:
        delivery = work.delivery
        if isinstance(exc, BrokerError):
            # Reply or ack could not be sent: the broker redelivers the request.
            level = logging.INFO if self.stopping else logging.WARNING
            log.log(level, COULD_NOT_ANSWER, delivery.correlation_id, exc)
            return
        log.error(
            "unexpected failure handling %s", delivery.correlation_id, exc_info=exc
        )
        # Hand it back rather than hold it unacknowledged forever: it comes back
        # flagged as redelivered, so it is counted and dead-lettered past the limit.
        with contextlib.suppress(BrokerError):
            self._connection.reject(delivery, requeue=True)

    def _done(self, failed: bool | None) -> None:
        """One delivery settled; ``failed`` is None when no handler ran for it."""
        with self._in_flight_lock:
            self._in_flight -= 1
            # Counted under the lock taken anyway: `rpc status` reads them.
            if failed is not None:
                self.served += 1
                if failed:
                    self.errors += 1
            self._in_flight_lock.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._in_flight_lock:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._in_flight_lock.wait(remaining)
        return True

    def shutdown(self, *, wait: bool, cancel_pending: bool = False) -> None:
        """End the handler threads (after what is queued, unless ``cancel_pending``)."""
        self.pool.shutdown(wait=wait, cancel_pending=cancel_pending)

    def close_loop(self) -> None:
        """Stop the event loop; coroutines still running are cancelled."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(_cancel_all_and_stop, loop)
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=5)
        if not loop.is_running():
            loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop of ``async def`` handlers, while it runs."""
        return self._loop


def _cancel_all_and_stop(loop: asyncio.AbstractEventLoop) -> None:
    # Handlers still running at this point were given up on (kill, or a stop that
    # timed out): their requests were not acked, so the broker hands them out again.
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.stop()
