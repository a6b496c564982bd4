"""An asyncio service: ``async def`` handlers that wait without holding a thread.

``greet_all`` calls the greeter once per name, all at once, through an awaitable
proxy; ``pause`` stands for slow I/O (a remote API, a database): hundreds of pauses
run together on one worker's event loop.
"""

from __future__ import annotations

import asyncio

from rpc import RpcProxy, rpc

MAX_PAUSE = 60.0


class Concierge:
    name = "concierge"
    greeter = RpcProxy("greeter")  # awaitable here, since the handlers are async

    @rpc
    async def greet_all(self, names: list[str]) -> list[str]:
        """Greet every name through the greeter service, concurrently."""
        greetings = await asyncio.gather(*(self.greeter.hello(n) for n in names))
        return [str(greeting) for greeting in greetings]

    @rpc(idempotent=True)
    async def pause(self, seconds: float) -> float:
        """Wait ``seconds`` (at most 60) without blocking anything, then answer."""
        if not 0 <= seconds <= MAX_PAUSE:
            raise ValueError(f"seconds must be between 0 and {MAX_PAUSE:g}")
        await asyncio.sleep(seconds)
        return seconds
