"""Services with ``async def`` handlers, for the asyncio tests."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, ClassVar

from rpc import (
    CurrentCall,
    EventDispatcher,
    RpcProxy,
    current_call,
    event_handler,
    rpc,
)


class AsyncEcho:
    name = "aecho"
    # Gates that one call waits on and another opens: they live as long as the
    # process, like anything on the class.
    gates: ClassVar[dict[str, asyncio.Event]] = {}

    @rpc
    async def echo(self, value: object) -> object:
        await asyncio.sleep(0)
        return value

    @rpc
    async def wait_for_gate(self, key: str, seconds: float) -> bool:
        """Wait until another call opens gate ``key``; False if it never does."""
        gate = self.gates.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(gate.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    @rpc
    async def open_gate(self, key: str) -> None:
        self.gates.setdefault(key, asyncio.Event()).set()

    @rpc
    async def sleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @rpc
    async def fail(self, message: str) -> None:
        raise ValueError(message)

    @rpc
    async def remaining(self) -> float | None:
        call = current_call()
        return None if call is None else call.remaining()

    @rpc
    async def thread(self) -> str:
        return threading.current_thread().name

    @rpc
    def sync_thread(self) -> str:
        """A plain method beside the async ones: it runs in the thread pool."""
        return threading.current_thread().name


class AsyncRelay:
    name = "arelay"
    echo = RpcProxy("aecho")
    call = CurrentCall()

    @rpc
    async def relay_many(self, values: list[object]) -> list[object]:
        """Call the echo service once per value, all at once."""
        return list(await asyncio.gather(*(self.echo.echo(v) for v in values)))

    @rpc
    async def nested_remaining(self) -> list[float | None]:
        return [self.call.remaining(), await self.echo.remaining()]

    @rpc
    def sync_relay(self, value: object) -> object:
        """A plain handler in the same service gets the threaded proxy."""
        return self.echo.echo(value)


class AsyncEvents:
    """Casts, dispatches and event handling from ``async def`` handlers."""

    name = "aevents"
    dispatch = EventDispatcher()
    # What the handlers saw, read by the test from another thread.
    seen: ClassVar[queue.Queue[tuple[str, Any]]] = queue.Queue()

    @rpc
    async def record(self, value: object) -> None:
        """The target of casts."""
        await asyncio.sleep(0)
        self.seen.put(("record", value))

    @rpc
    async def announce(self, value: object) -> None:
        """Dispatch an event from an async handler: the dispatcher is awaited."""
        await self.dispatch("announced", value)

    @event_handler("aevents", "announced")
    async def on_announced(self, payload: object) -> None:
        self.seen.put(("on_announced", [payload, threading.current_thread().name]))
