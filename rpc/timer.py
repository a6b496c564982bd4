"""``@timer(interval)``: run a method every ``interval`` seconds, and the consumer
that decides which worker runs it.

By default a timer fires on one worker of the whole cluster. Its durable queue
(:func:`rpc.protocol.timer_queue`) has a single active consumer, and holds a token:
every worker publishes one when it connects, the active consumer keeps one
(unacknowledged) and drops the others, and the worker holding the token is the one
whose ticker fires. When that worker stops, it hands the token back after its last
tick; when it dies or loses its connection, the broker requeues the token to the
next consumer. So one tick never runs on two workers, except across a connection
loss the old holder has not noticed yet: its ticker checks before every tick.

``every_worker=True`` fires on every worker process, with no queue.

The memory:// transport has no single active consumer: there every runner that
receives a token fires, so a timer in an in-memory test may fire on each runner of
the service (one runner per service keeps it to one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from rpc import protocol
from rpc.context import CallContext
from rpc.entrypoints import Entrypoint, attach, is_coroutine_function
from rpc.errors import BrokerError
from rpc.protocol import Request, check_method_name
from rpc.service import Handler, ServiceDefinition
from rpc.transport import Delivery
from rpc.worker.consumers import Consumer, Worker, register_consumer
from rpc.worker.invoke import Direct

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

TICK_FAILED = "%s.%s: timer tick failed: %s"
#: The body of a timer's token; its content does not matter.
TOKEN = b"{}"


@dataclasses.dataclass(frozen=True)
class TimerEntrypoint(Entrypoint):
    """A method run every ``interval`` seconds, on one worker or on every one."""

    interval: float
    every_worker: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "timer",
            "interval": self.interval,
            "every_worker": self.every_worker,
        }


def timer(
    interval: float, *, every_worker: bool = False
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the method, which takes no arguments, every ``interval`` seconds.

    One worker of the service runs it, cluster-wide, and another takes over when
    that one stops or dies; ``every_worker=True`` runs it on every worker process.
    A tick still running when the next is due makes that one skipped, not queued
    up; a tick that raises is logged, and the timer goes on.
    """
    if not interval > 0:
        raise ValueError(f"a timer's interval must be positive, not {interval!r}")

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if not callable(function):
            raise TypeError("@timer decorates a method")
        name = check_method_name(function.__name__)
        attach(function, TimerEntrypoint(name, float(interval), every_worker))
        return function

    return decorate


def next_due(due: float, now: float, interval: float) -> float:
    """When the tick after the one due at ``due`` is due, as seen at ``now``.

    Ticks the last one ran over are skipped, not stacked: the next is the first
    one still ahead of ``now``.
    """
    due += interval
    if due <= now:
        due += ((now - due) // interval + 1) * interval
    return due


class Ticker:
    """A thread calling ``tick`` every ``interval`` seconds while ``active()``."""

    def __init__(
        self,
        interval: float,
        tick: Callable[[], None],
        *,
        active: Callable[[], bool],
        name: str,
    ) -> None:
        self._interval = interval
        self._tick = tick
        self._active = active
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop ticking; wait up to ``timeout`` for a tick in progress to end."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        due = time.monotonic() + self._interval
        while not self._stopped.wait(max(0.0, due - time.monotonic())):
            if not self._active():
                return
            self._tick()
            due = next_due(due, time.monotonic(), self._interval)


@register_consumer(TimerEntrypoint)
class TimerConsumer(Consumer):
    """The token queue of one cluster-wide timer, and its ticker while it holds one.

    With ``every_worker`` there is no queue: the ticker runs while the runner does.
    """

    def __init__(self, worker: Worker, service: str, handler: Handler) -> None:
        super().__init__(worker, service)
        entrypoint = handler.entrypoint
        assert isinstance(entrypoint, TimerEntrypoint)
        self.entrypoint = entrypoint
        self.handler = handler
        self.part = f"timer-{handler.name}"
        self.queue = protocol.timer_queue(service, handler.name)
        # The token stays unacknowledged while this worker ticks.
        self.holds = 0 if entrypoint.every_worker else 1
        self._lock = threading.Lock()
        self._token: Delivery | None = None
        self._ticker: Ticker | None = None
        self._generation = -1

    @classmethod
    def for_handlers(
        cls, worker: Worker, service: ServiceDefinition, handlers: Sequence[Handler]
    ) -> list[Consumer]:
        return [cls(worker, service.name, handler) for handler in handlers]

    def start(self, channel: Any) -> None:
        self._generation = self.worker.connection.generation
        if self.entrypoint.every_worker:
            self._start_ticker()
            return
        super().start(channel)

    def declare(self, channel: Any) -> str:
        channel.queue_declare(
            queue=self.queue,
            durable=True,
            auto_delete=False,
            exclusive=False,
            arguments=protocol.timer_queue_arguments(),
        )
        # This worker's token: the active consumer keeps one and drops the rest.
        channel.basic_publish(
            channel.prepare_message(
                TOKEN, None, "application/json", "utf-8", {}, {"delivery_mode": 2}
            ),
            exchange="",
            routing_key=self.queue,
        )
        return self.queue

    def on_delivery(self, delivery: Delivery) -> None:
        worker = self.worker
        if not worker.accepting:
            worker.hand_back(delivery)
            return
        with self._lock:
            held = self._token is not None
            if not held:
                self._token = delivery
        if held:
            worker.connection.ack(delivery)  # a spare token: dropped
            return
        self._start_ticker()

    def stop(self) -> None:
        """Finish the tick in progress, then hand the token to the next worker."""
        super().stop()
        self._stop_ticker(wait=self.worker.config.shutdown_timeout)
        with self._lock:
            token, self._token = self._token, None
        if token is not None and self.worker.connection.connected:
            # Closed meanwhile: the broker requeues it with the channel.
            with contextlib.suppress(BrokerError):
                self.worker.connection.reject(token, requeue=True)

    def close(self) -> None:
        # The connection is gone, and the token with it: stop at once, without
        # waiting for a tick in progress (this may run on the I/O thread).
        self._stop_ticker(wait=0.0)
        with self._lock:
            self._token = None

    def _start_ticker(self) -> None:
        ticker = Ticker(
            self.entrypoint.interval,
            self._tick,
            active=self._active,
            name=f"rpc-timer-{self.service}.{self.handler.name}",
        )
        with self._lock:
            if self._ticker is not None:
                return
            self._ticker = ticker
        ticker.start()

    def _stop_ticker(self, *, wait: float) -> None:
        with self._lock:
            ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop(wait)

    def _active(self) -> bool:
        worker = self.worker
        if not worker.accepting:
            return False
        if self.entrypoint.every_worker:
            return True
        connection = worker.connection
        return connection.connected and connection.generation == self._generation

    def _tick(self) -> None:
        worker = self.worker
        service = worker.services[self.service]
        handler = self.handler
        asynchronous = is_coroutine_function(handler.function)
        request = Request(
            service=self.service,
            method=handler.name,
            args=[],
            kwargs={},
            correlation_id=None,
            reply_to=None,
            deadline=None,
            caller="timer",
        )
        context = CallContext(self.service, request, asynchronous=asynchronous)
        tick = Direct(service, "timer")
        try:
            loop = worker.dispatcher.loop
            if asynchronous and loop is not None:
                asyncio.run_coroutine_threadsafe(
                    worker.invoker.invoke_async(tick, handler, context), loop
                ).result()
            else:
                worker.invoker.invoke(tick, handler, context)
        except Exception as exc:
            log.warning(TICK_FAILED, self.service, handler.name, exc, exc_info=True)
