"""The context of the call a handler is running: its request, deadline and origin."""

from __future__ import annotations

import contextvars
import dataclasses

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

    @property
    def caller_identity(self) -> str | None:
        """Who the gateway says the caller is (its token's name), or None.

        Set only for calls that came through a gateway the worker trusts
        (``trusted_identity_users``); anyone else's claim is ignored.
        """
        return self.request.caller_identity

    def remaining(self) -> float | None:
        """Seconds left before the caller gives up, or None when it set no deadline."""
        return self.request.remaining()


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "rpc_call_context", default=None
)


def current_call() -> CallContext | None:
    """The call being served by this thread or task, or None outside a handler."""
    return _current.get()


class serving:
    """Make ``context`` current while a handler runs; proxies inherit its deadline.

    ``with serving(context):``. A class rather than a generator-based context
    manager: it is entered for every handler run, and costs half the calls.
    """

    __slots__ = ("_context", "_token")

    def __init__(self, context: CallContext) -> None:
        self._context = context

    def __enter__(self) -> CallContext:
        self._token = _current.set(self._context)
        return self._context

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)
