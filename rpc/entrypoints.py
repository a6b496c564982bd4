"""The ``@rpc`` decorator and the entrypoint object it attaches to a method."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from rpc.protocol import check_method_name

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

    def describe(self) -> dict[str, Any]:
        return {"kind": "rpc", "idempotent": self.idempotent}


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
def rpc(*, idempotent: bool = False) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def rpc(
    func: Callable[P, R] | None = None, /, *, idempotent: bool = False
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Expose a service method over RPC: ``@rpc`` or ``@rpc(idempotent=True)``.

    The function itself is returned unchanged, so it keeps its signature, its types
    and can still be called directly in tests.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if not callable(function):
            raise TypeError("@rpc decorates a method")
        name = check_method_name(function.__name__)
        attach(function, RpcEntrypoint(name, idempotent=idempotent))
        return function

    if func is not None:
        return decorate(func)
    return decorate


def is_coroutine_function(func: Callable[..., Any]) -> bool:
    """True for ``async def`` handlers, which run on the worker's event loop."""
    return inspect.iscoroutinefunction(func)
