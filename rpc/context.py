"""The context of the call a handler is running: its request, deadline and origin."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

from rpc.protocol import Request


@dataclasses.dataclass(frozen=True)
class CallContext:
    """What a handler may want to know about the call it is serving.

    ``redelivered`` is true when the broker may have handed this request to a worker
    before (that worker died or lost its connection): guard non-idempotent work on it.
    """

    service: str
    request: Request
    #: True when the handler is a coroutine function running on the worker's event
    #: loop: dependencies then give it awaitable clients.
    asynchronous: bool = False

    @property
    def redelivered(self) -> bool:
        return self.request.redelivered or self.request.delivery_count > 1

    @property
    def deadline(self) -> float | None:
        return self.request.deadline

    def remaining(self) -> float | None:
        """Seconds left before the caller gives up, or None when it set no deadline."""
        return self.request.remaining()


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "rpc_call_context", default=None
)


def current_call() -> CallContext | None:
    """The call being served by this thread or task, or None outside a handler."""
    return _current.get()


@contextlib.contextmanager
def serving(context: CallContext) -> Iterator[CallContext]:
    """Make ``context`` current while a handler runs; proxies inherit its deadline."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
