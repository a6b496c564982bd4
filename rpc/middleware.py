"""The one seam around a call: middlewares see every handler run and every send.

A middleware is an object with up to four hooks, all optional (subclass
:class:`Middleware` and override what you need):

* server side, around each run of a handler (a call, a cast, an event, a timer):
  ``before_handler(call)`` may return an :class:`Outcome` to answer without running
  the handler (a cache hit), or raise to reject the call (authentication, validation);
  ``after_handler(call, outcome)`` sees the result or the error.
* client side, around each outgoing call, cast and event:
  ``before_send(call)`` may add headers to ``call.headers`` (tracing) or raise to
  refuse the send; ``after_send(call, outcome)`` sees the reply or the error, once.

Hooks are plain functions, so one middleware serves threaded and ``async def``
handlers alike: the worker calls ``before`` hooks in list order and ``after`` hooks
in reverse (an onion), on the thread or task that runs the handler, so context
variables set in ``before_handler`` are seen by the handler and by the calls it makes.
``call.state`` carries whatever a middleware needs from its ``before`` to its
``after`` hook. An ``after`` hook that raises is logged and ignored: it cannot
change what the caller gets.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from rpc.context import CallContext
from rpc.errors import ConfigError
from rpc.serialization import JsonValue
from rpc.service import Handler

log = logging.getLogger(__name__)

#: The kinds of handler run and of send a middleware sees.
KINDS = ("call", "cast", "event", "timer")

AFTER_FAILED = "middleware %r failed after %s.%s"


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What a handler run or a send came to: a result, or the error it raised."""

    result: JsonValue = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(slots=True, eq=False)
class ServerCall:
    """One run of a handler, as middlewares on the worker see it."""

    context: CallContext
    handler: Handler
    #: "call" (a caller waits for the reply), "cast", "event" or "timer".
    kind: str
    #: The message's headers as they arrived (read-only).
    headers: Mapping[str, Any]
    #: Scratch space for middlewares, from their ``before`` to their ``after`` hook.
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def service(self) -> str:
        return self.context.service

    @property
    def method(self) -> str:
        return self.handler.name


@dataclasses.dataclass(slots=True, eq=False)
class ClientCall:
    """One outgoing call, cast or event, as middlewares on the caller see it."""

    service: str
    #: The method called; for an event, its type.
    method: str
    #: "call", "cast" or "event".
    kind: str
    #: Positional arguments; an event's payload is its only one.
    args: Sequence[JsonValue]
    kwargs: Mapping[str, JsonValue]
    #: Headers the message will carry besides the framework's own; add to them.
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)
    correlation_id: str | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


class Middleware:
    """Base class with every hook a no-op: override the ones you need."""

    def before_handler(self, call: ServerCall) -> Outcome | None:
        """Runs before the handler; an Outcome answers in its place, raising rejects."""
        return None

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        """Runs after the handler, or after an earlier hook answered or rejected."""

    def before_send(self, call: ClientCall) -> None:
        """Runs before a call, cast or event is published; may add ``call.headers``."""

    def after_send(self, call: ClientCall, outcome: Outcome) -> None:
        """Runs once the reply (or confirm) is in, or the send failed."""


def _overrides(middleware: object, name: str) -> bool:
    hook = getattr(type(middleware), name, None)
    return hook is not None and hook is not getattr(Middleware, name)


class ServerChain:
    """The server-side hooks of an ordered list of middlewares, run around handlers.

    Only middlewares that override a hook are called for it, and an empty chain is
    false, so a worker with no middleware does no extra work per call.
    """

    __slots__ = ("_after", "_before", "middlewares")

    def __init__(self, middlewares: Iterable[Middleware] = ()) -> None:
        self.middlewares: tuple[Middleware, ...] = tuple(middlewares)
        self._before = tuple(
            m for m in self.middlewares if _overrides(m, "before_handler")
        )
        self._after = tuple(
            m for m in self.middlewares if _overrides(m, "after_handler")
        )

    def __bool__(self) -> bool:
        return bool(self._before or self._after)

    def run(self, call: ServerCall, handler: Callable[[], JsonValue]) -> JsonValue:
        """Run ``handler`` inside the chain; return its result or raise its error."""
        outcome = self.enter(call)
        if outcome is None:
            try:
                outcome = Outcome(result=handler())
            except Exception as exc:
                outcome = Outcome(error=exc)
        return self.exit(call, outcome)

    async def run_async(
        self, call: ServerCall, handler: Callable[[], Awaitable[JsonValue]]
    ) -> JsonValue:
        """:meth:`run` for a coroutine handler: the same hooks, the handler awaited."""
        outcome = self.enter(call)
        if outcome is None:
            try:
                outcome = Outcome(result=await handler())
            except Exception as exc:
                outcome = Outcome(error=exc)
        return self.exit(call, outcome)

    def enter(self, call: ServerCall) -> Outcome | None:
        """Run the ``before`` hooks; an Outcome when one answered or rejected."""
        for middleware in self._before:
            try:
                early = middleware.before_handler(call)
            except Exception as exc:
                return Outcome(error=exc)
            if early is not None:
                return early
        return None

    def exit(self, call: ServerCall, outcome: Outcome) -> JsonValue:
        """Run the ``after`` hooks in reverse; return the result or raise the error."""
        for middleware in reversed(self._after):
            try:
                middleware.after_handler(call, outcome)
            except Exception:
                log.exception(AFTER_FAILED, middleware, call.service, call.method)
        if outcome.error is not None:
            raise outcome.error
        return outcome.result


class ClientChain:
    """The client-side hooks of an ordered list of middlewares, run around sends."""

    __slots__ = ("_after", "_before", "middlewares")

    def __init__(self, middlewares: Iterable[Middleware] = ()) -> None:
        self.middlewares: tuple[Middleware, ...] = tuple(middlewares)
        self._before = tuple(
            m for m in self.middlewares if _overrides(m, "before_send")
        )
        self._after = tuple(m for m in self.middlewares if _overrides(m, "after_send"))

    def __bool__(self) -> bool:
        return bool(self._before or self._after)

    def before(self, call: ClientCall) -> None:
        """Run the ``before_send`` hooks; what one raises refuses the send."""
        for middleware in self._before:
            middleware.before_send(call)

    def after(self, call: ClientCall, outcome: Outcome) -> None:
        """Run the ``after_send`` hooks in reverse; errors are logged, not raised."""
        for middleware in reversed(self._after):
            try:
                middleware.after_send(call, outcome)
            except Exception:
                log.exception(AFTER_FAILED, middleware, call.service, call.method)


def load_middleware(paths: Iterable[str]) -> list[Middleware]:
    """Import and instantiate middlewares named ``package.module:Class``.

    For ``Config.middleware`` and ``rpc run --middleware``: each class is called with
    no arguments.
    """
    loaded: list[Middleware] = []
    for path in paths:
        module_name, sep, attribute = path.partition(":")
        if not sep:
            module_name, _, attribute = path.rpartition(".")
        if not module_name or not attribute:
            raise ConfigError(f"middleware: expected 'module:Class', got {path!r}")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"middleware: cannot import {path!r}: {exc}") from exc
        middleware = target() if isinstance(target, type) else target
        if not isinstance(middleware, Middleware):
            raise ConfigError(f"middleware: {path!r} is not a rpc.Middleware")
        loaded.append(middleware)
    return loaded
