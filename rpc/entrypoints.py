"""The ``@rpc`` and ``@event_handler`` decorators and the entrypoints behind them."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

import orjson

from rpc.cache.policy import Cache, policy_of
from rpc.errors import ServiceDefinitionError
from rpc.protocol import (
    HANDLER_TYPES,
    SERVICE_POOL,
    check_event_pattern,
    check_method_name,
    check_service_name,
)

P = ParamSpec("P")
R = TypeVar("R")

#: Attribute of a decorated function that holds its entrypoints.
ENTRYPOINTS_ATTRIBUTE = "__rpc_entrypoints__"


@dataclasses.dataclass(frozen=True)
class Entrypoint:
    """Something that makes a service method run when a message arrives."""

    method_name: str

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__}


@dataclasses.dataclass(frozen=True)
class RpcEntrypoint(Entrypoint):
    """A method callable over RPC: request in, reply out.

    ``idempotent`` declares that running the method twice with the same arguments
    does no harm, which lets callers retry it transparently after a connection loss.
    """

    idempotent: bool = False
    #: Argument whose value picks the worker (see "Key-sharded routing").
    shard_by: str | None = None
    #: How its results are cached (see "Caching results"); None: never.
    cache: Cache | None = None

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"kind": "rpc", "idempotent": self.idempotent}
        if self.shard_by is not None:
            described["shard_by"] = self.shard_by
        if self.cache is not None:
            described["cache"] = self.cache.describe()
        return described


@dataclasses.dataclass(frozen=True)
class EventHandlerEntrypoint(Entrypoint):
    """A method run for events of ``source_service`` whose type matches a filter."""

    source_service: str
    event_types: tuple[str, ...]
    handler_type: str = SERVICE_POOL

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "event_handler",
            "source_service": self.source_service,
            "event_types": list(self.event_types),
            "handler_type": self.handler_type,
        }


def attach(func: Callable[..., Any], entrypoint: Entrypoint) -> None:
    """Record ``entrypoint`` on ``func``, where the service loader finds it."""
    existing: list[Entrypoint] = list(getattr(func, ENTRYPOINTS_ATTRIBUTE, ()))
    existing.append(entrypoint)
    setattr(func, ENTRYPOINTS_ATTRIBUTE, tuple(existing))


def entrypoints_of(func: object) -> tuple[Entrypoint, ...]:
    """The entrypoints attached to ``func``, if any."""
    return tuple(getattr(func, ENTRYPOINTS_ATTRIBUTE, ()))


@overload
def rpc(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def rpc(
    *,
    idempotent: bool = False,
    shard_by: str | None = None,
    cache: float | Cache | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def rpc(
    func: Callable[P, R] | None = None,
    /,
    *,
    idempotent: bool = False,
    shard_by: str | None = None,
    cache: float | Cache | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Expose a service method over RPC: ``@rpc`` or ``@rpc(idempotent=True)``.

    ``shard_by="user_id"`` routes every call by the value of that argument, so
    calls with the same value reach the same worker while the set of workers is
    stable. ``cache=60`` (or a :class:`~rpc.cache.policy.Cache`) keeps results for
    60 seconds in the result cache; only an idempotent method can be cached. The
    function itself is returned unchanged, so it keeps its signature, its types
    and can still be called directly in tests.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if not callable(function):
            raise TypeError("@rpc decorates a method")
        name = check_method_name(function.__name__)
        parameters = inspect.signature(function).parameters
        if shard_by is not None and shard_by not in parameters:
            raise TypeError(f"{name}() has no argument {shard_by!r} to shard by")
        policy = _cache_policy(name, function, cache, idempotent=idempotent)
        attach(
            function,
            RpcEntrypoint(name, idempotent=idempotent, shard_by=shard_by, cache=policy),
        )
        return function

    if func is not None:
        return decorate(func)
    return decorate


def _cache_policy(
    name: str, function: Callable[..., Any], cache: object, *, idempotent: bool
) -> Cache | None:
    """The checked policy of ``@rpc(cache=...)``; a wrong one fails the class body."""
    try:
        policy = policy_of(cache)
    except ValueError as exc:
        raise ServiceDefinitionError(f"{name}(): {exc}") from exc
    if policy is None:
        return None
    if not idempotent:
        raise ServiceDefinitionError(
            f"{name}() is cached but not idempotent: a cached result stands for a "
            "run that does not happen, so declare @rpc(idempotent=True, cache=...) "
            "only for a method whose result depends on its arguments alone"
        )
    for parameter in inspect.signature(function).parameters.values():
        if parameter.default is inspect.Parameter.empty:
            continue
        try:
            orjson.dumps(parameter.default)
        except TypeError as exc:
            raise ServiceDefinitionError(
                f"{name}(): the default of {parameter.name!r} is part of the cache "
                f"key and must be a JSON value ({exc})"
            ) from exc
    return policy


def event_handler(
    source_service: str,
    event_type: str | Sequence[str],
    *,
    handler_type: str = SERVICE_POOL,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the method with the payload of every matching event ``source_service`` sends.

    ``event_type`` is a type (``"order_created"``) or a filter with wildcards
    (``"orders.*"``: one word, ``"#"``: any words), or a list of them: the handler
    gets an event matching any. ``handler_type`` says who gets each event:
    ``SERVICE_POOL`` (default) one worker of this service, and events wait in a
    durable queue while none runs; ``BROADCAST`` every worker process;
    ``SINGLETON`` one worker of the whole cluster at a time, the others standing by.
    """
    check_service_name(source_service)
    patterns = (event_type,) if isinstance(event_type, str) else tuple(event_type)
    if not patterns:
        raise ValueError("@event_handler needs at least one event type")
    for pattern in patterns:
        check_event_pattern(pattern)
    if handler_type not in HANDLER_TYPES:
        raise ValueError(
            f"handler_type must be one of {', '.join(HANDLER_TYPES)}, "
            f"not {handler_type!r}"
        )

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if not callable(function):
            raise TypeError("@event_handler decorates a method")
        name = check_method_name(function.__name__)
        attach(
            function,
            EventHandlerEntrypoint(name, source_service, patterns, handler_type),
        )
        return function

    return decorate


def is_coroutine_function(func: Callable[..., Any]) -> bool:
    """True for ``async def`` handlers, which run on the worker's event loop."""
    return inspect.iscoroutinefunction(func)
