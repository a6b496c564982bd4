"""Reach into a runner: call an entrypoint in-process, or wait until a handler ran."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from rpc import protocol
from rpc.context import CallContext
from rpc.serialization import JsonValue
from rpc.service import Handler
from rpc.testing.dependencies import _definition
from rpc.worker import ServiceRunner

#: Seconds :func:`entrypoint_waiter` waits unless told otherwise.
DEFAULT_WAIT = 30.0


class EntrypointHook:
    """Calls one entrypoint of a runner as if its message had just arrived.

    The call gets what a delivered one gets (a fresh instance, its dependencies, a
    :class:`~rpc.CallContext` with the runner's default deadline) but runs on the
    calling thread: its return value comes back as is, and an exception it raises
    propagates with its original traceback.
    """

    def __init__(self, runner: ServiceRunner, service: str, method: str) -> None:
        self.runner = runner
        self.service = service
        self.method = method
        _handler(runner, service, method)  # fail early on a wrong name

    def __call__(self, *args: JsonValue, **kwargs: JsonValue) -> JsonValue:
        definition = _definition(self.runner, self.service)
        handler = _handler(self.runner, self.service, self.method)
        handler.bind(list(args), kwargs)  # the TypeError Python would give
        request = protocol.Request(
            service=self.service,
            method=self.method,
            args=list(args),
            kwargs=kwargs,
            correlation_id=uuid.uuid4().hex,
            reply_to=None,
            deadline=time.time() + self.runner.config.default_timeout,
            caller="entrypoint_hook",
        )
        context = CallContext(self.service, request)
        return self.runner.invoke(definition, handler, context)

    def __enter__(self) -> EntrypointHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


def entrypoint_hook(runner: ServiceRunner, service: str, method: str) -> EntrypointHook:
    """A callable that runs ``service.method`` of ``runner`` in-process.

    ``entrypoint_hook(runner, "greeter", "hello")("ada")`` returns what the handler
    returns; it is also a context manager, ``with entrypoint_hook(...) as hello:``.
    """
    return EntrypointHook(runner, service, method)


class HandlerRun:
    """What an :func:`entrypoint_waiter` saw: one run of the handler it waited for."""

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self.context: CallContext | None = None
        self.exception: Exception | None = None
        self._value: JsonValue = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def result(self) -> JsonValue:
        """What the handler returned; re-raises (original traceback) what it raised."""
        if not self._done.is_set():
            raise RuntimeError(f"{self.service}.{self.method} has not run yet")
        if self.exception is not None:
            raise self.exception
        return self._value

    def _record(
        self, context: CallContext, value: JsonValue, error: Exception | None
    ) -> None:
        self.context, self._value, self.exception = context, value, error
        self._done.set()


@contextlib.contextmanager
def entrypoint_waiter(
    runner: ServiceRunner,
    service: str,
    method: str,
    *,
    timeout: float = DEFAULT_WAIT,
    until: Callable[[HandlerRun], bool] | None = None,
) -> Iterator[HandlerRun]:
    """Wait, when the block ends, until ``service.method`` has run in ``runner``.

    Only runs that finish after the block starts count; with ``until``, the first run
    for which ``until(run)`` is true. Handlers that fail count too: the run's
    ``exception`` says so, and its ``result`` re-raises it.

    Raises:
        TimeoutError: no such run finished within ``timeout`` seconds.
    """
    _handler(runner, service, method)
    run = HandlerRun(service, method)
    lock = threading.Lock()

    def observe(
        context: CallContext,
        handler: Handler,
        value: JsonValue,
        error: Exception | None,
    ) -> None:
        if context.service != service or handler.name != method:
            return
        with lock:
            if run.done:
                return
            candidate = HandlerRun(service, method)
            candidate._record(context, value, error)
            if until is None or until(candidate):
                run._record(context, value, error)

    remove = runner.observe(observe)
    try:
        yield run
        if not run._done.wait(timeout):
            raise TimeoutError(
                f"{service}.{method} did not run within {timeout}s "
                "(is the message routed to it, and is the runner started?)"
            )
    finally:
        remove()


def _handler(runner: ServiceRunner, service: str, method: str) -> Handler:
    definition = _definition(runner, service)
    handler: Any = definition.rpc_handlers.get(method)
    if handler is None:
        handler = next((h for h in definition.other_handlers if h.name == method), None)
    if handler is None:
        names = sorted(
            {*definition.rpc_handlers, *(h.name for h in definition.other_handlers)}
        )
        raise ValueError(f"service {service!r} has no entrypoint {method!r} ({names})")
    assert isinstance(handler, Handler)
    return handler
