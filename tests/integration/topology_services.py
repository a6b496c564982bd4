"""Services the topology tests run: each records what it saw and which worker saw it."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from rpc import (
    BROADCAST,
    SINGLETON,
    CurrentCall,
    Dependency,
    EventDispatcher,
    RpcProxy,
    ServiceRunner,
    event_handler,
    rpc,
)


class WorkerId(Dependency):
    """The id of the ServiceRunner (worker process) running the call."""

    def get_dependency(self, runtime: Any, context: Any) -> str:
        return str(runtime.instance_id)


class Record:
    """What handlers saw, per test, shared by every runner of this test process."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.items: list[tuple[str, str, Any]] = []  # (handler, worker, value)
        self.running = 0
        self.most_running = 0

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.running = self.most_running = 0

    def add(self, handler: str, worker: str, value: Any) -> None:
        with self.lock:
            self.items.append((handler, worker, value))
            self.lock.notify_all()

    def of(self, handler: str) -> list[tuple[str, Any]]:
        with self.lock:
            return [(w, v) for h, w, v in self.items if h == handler]

    def wait_for(self, handler: str, count: int, timeout: float = 30) -> list:
        """Wait until ``handler`` saw at least ``count`` items; return them."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len([1 for h, _, _ in self.items if h == handler]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.lock.wait(remaining)
        return self.of(handler)

    def per_worker(self, handler: str) -> dict[str, list[Any]]:
        grouped: dict[str, list[Any]] = defaultdict(list)
        for worker, value in self.of(handler):
            grouped[worker].append(value)
        return dict(grouped)


RECORD = Record()


class Runners:
    """Start ServiceRunners (each one worker process's worth) and stop them all."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.started: list[ServiceRunner] = []

    def start(self, *services: type, **changes: Any) -> ServiceRunner:
        runner = ServiceRunner(list(services), self.config.replace(**changes))
        runner.start()
        self.started.append(runner)
        return runner

    def stop_all(self) -> None:
        for runner in reversed(self.started):
            runner.stop()
        self.started.clear()


class Sink:
    name = "sink"
    worker = WorkerId()

    @rpc
    def put(self, value: Any) -> None:
        RECORD.add("put", self.worker, value)

    @rpc
    def slow_put(self, value: Any, seconds: float) -> None:
        time.sleep(seconds)
        RECORD.add("put", self.worker, value)

    @rpc
    def fail(self, message: str) -> None:
        raise ValueError(message)


class Forwarder:
    name = "forwarder"
    sink = RpcProxy("sink")

    @rpc
    def forward(self, value: Any) -> str:
        self.sink.put.cast(value)
        return "cast"


class Shop:
    """Dispatches events through the dependency."""

    name = "shop"
    dispatch = EventDispatcher()

    @rpc
    def order(self, order_id: int) -> None:
        self.dispatch("orders.created", {"id": order_id})


class Billing:
    """Service pool handlers: one copy per service, shared by its workers."""

    name = "billing"
    worker = WorkerId()
    call = CurrentCall()

    @event_handler("shop", "orders.*")
    def on_order(self, payload: Any) -> None:
        RECORD.add("billing", self.worker, (self.call.request.event_type, payload))


class Audit:
    """A second subscribing service: it gets its own copy of every event."""

    name = "audit"
    worker = WorkerId()

    @event_handler("shop", "#")
    def on_anything(self, payload: Any) -> None:
        RECORD.add("audit", self.worker, payload)


class Cacher:
    name = "cacher"
    worker = WorkerId()

    @event_handler("shop", "orders.created", handler_type=BROADCAST)
    def invalidate(self, payload: Any) -> None:
        RECORD.add("cacher", self.worker, payload)


class Reporter:
    name = "reporter"
    worker = WorkerId()

    @event_handler("shop", ["orders.created", "orders.paid"], handler_type=SINGLETON)
    def report(self, payload: Any) -> None:
        RECORD.add("reporter", self.worker, payload)


class Square:
    """Scatter-gather target: notes how many calls ran at once."""

    name = "square"
    worker = WorkerId()

    @rpc
    def square(self, x: int, delay: float = 0.0) -> int:
        with RECORD.lock:
            RECORD.running += 1
            RECORD.most_running = max(RECORD.most_running, RECORD.running)
        try:
            time.sleep(delay)
            if x < 0:
                raise ValueError(f"negative: {x}")
            RECORD.add("square", self.worker, x)
            return x * x
        finally:
            with RECORD.lock:
                RECORD.running -= 1

    @rpc
    def power(self, x: int, exponent: int = 2) -> int:
        return int(x**exponent)


class Cache:
    """Sharded by key: answers with the id of the worker that owns the key."""

    name = "cache"
    worker = WorkerId()

    @rpc(shard_by="key")
    def owner(self, key: str) -> str:
        return self.worker

    @rpc
    def anyone(self) -> str:
        return self.worker
