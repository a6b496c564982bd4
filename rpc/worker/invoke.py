"""Running a handler: a fresh instance, its dependencies, and the server middleware.

Sync and async handlers share everything but the call itself: the instance, the
context and the chain's decisions; only :meth:`Invoker.invoke` calls and
:meth:`Invoker.invoke_async` awaits.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from rpc.context import CallContext, serving
from rpc.dependencies import Runtime
from rpc.middleware import Middleware, Outcome, ServerCall, ServerChain
from rpc.protocol import Request
from rpc.serialization import JsonValue
from rpc.service import Handler, ServiceDefinition

log = logging.getLogger(__name__)

#: Sees every handler run: its context, handler, and result or exception.
HandlerObserver = Callable[[CallContext, Handler, JsonValue, Exception | None], None]

NO_HEADERS: Mapping[str, Any] = MappingProxyType({})


class Origin(Protocol):
    """What started a handler run: a delivery, a timer's tick, a test's call.

    Its kind and headers are asked for only when a middleware will see them.
    """

    @property
    def service(self) -> ServiceDefinition: ...

    @property
    def headers(self) -> Mapping[str, Any]:
        """The headers of the message that started the run, as they arrived."""

    def kind(self, request: Request) -> str:
        """The run's kind for middlewares: "call", "cast", "event" or "timer"."""


@dataclasses.dataclass(frozen=True, slots=True)
class Direct:
    """A handler run that no delivery started: a timer's tick, or a test's call."""

    service: ServiceDefinition
    run_kind: str = "call"

    @property
    def headers(self) -> Mapping[str, Any]:
        return NO_HEADERS

    def kind(self, request: Request) -> str:
        return self.run_kind


class Invoker:
    """Calls handlers of a runner's services through its middleware chain."""

    def __init__(self, runtime: Runtime, middleware: Iterable[Middleware] = ()) -> None:
        self._runtime = runtime
        self._middleware: tuple[Middleware, ...] = tuple(middleware)
        # None when no middleware has a hook: the call path then checks one
        # attribute. Replaced whole (copy on write), never changed in place, so a
        # handler thread reads either the old chain or the new one.
        self._chain: ServerChain | None = _chain_of(self._middleware)
        self._lock = threading.Lock()

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middlewares every handler run goes through, outermost first."""
        return self._middleware

    def invoke(
        self, origin: Origin, handler: Handler, context: CallContext
    ) -> JsonValue:
        """Make a fresh service instance with its dependencies and call the handler."""
        instance = self._instance(origin.service, context)
        request = context.request
        chain = self._chain
        with serving(context):
            if chain is None:
                return handler.function(instance, *request.args, **request.kwargs)
            return chain.run(
                ServerCall(context, handler, origin.kind(request), origin.headers),
                lambda: handler.function(instance, *request.args, **request.kwargs),
            )

    async def invoke_async(
        self, origin: Origin, handler: Handler, context: CallContext
    ) -> JsonValue:
        """:meth:`invoke` for an ``async def`` handler, awaited on the runner's loop.

        Each call runs in its own task, so the context (and its deadline) set here
        is seen by this call's nested calls only.
        """
        instance = self._instance(origin.service, context)
        request = context.request
        chain = self._chain
        with serving(context):
            if chain is None:
                return await handler.function(instance, *request.args, **request.kwargs)
            return await chain.run_async(
                ServerCall(context, handler, origin.kind(request), origin.headers),
                lambda: handler.function(instance, *request.args, **request.kwargs),
            )

    def _instance(self, service: ServiceDefinition, context: CallContext) -> Any:
        instance = service.cls()
        for attr, dependency in service.dependencies.items():
            setattr(instance, attr, dependency.get_dependency(self._runtime, context))
        return instance

    def observe(self, observer: HandlerObserver) -> Callable[[], None]:
        """Call ``observer`` after every handler run; returns what removes it.

        The observer is the outermost middleware: it hears of a run once every
        other middleware is done with it, and sees the outcome they all saw. It runs
        on the handler's thread, and an exception it raises is logged, never given
        to the caller.
        """
        watcher = _Observer(observer)
        with self._lock:
            self._middleware = (watcher, *self._middleware)
            self._chain = _chain_of(self._middleware)

        def remove() -> None:
            with self._lock:
                self._middleware = tuple(
                    m for m in self._middleware if m is not watcher
                )
                self._chain = _chain_of(self._middleware)

        return remove


class _Observer(Middleware):
    """Hands each outcome to an observer of :meth:`Invoker.observe`."""

    def __init__(self, observer: HandlerObserver) -> None:
        self._observer = observer

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        try:
            self._observer(call.context, call.handler, outcome.result, outcome.error)
        except Exception:
            log.exception("handler observer failed")


def _chain_of(middleware: tuple[Middleware, ...]) -> ServerChain | None:
    chain = ServerChain(middleware)
    return chain if chain else None
