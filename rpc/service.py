"""What a service class is: a name, its entrypoints and its dependencies."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from rpc.cache.invalidation import PAYLOAD_SIGNATURE, invalidation_handlers
from rpc.dependencies import Dependency
from rpc.entrypoints import Entrypoint, RpcEntrypoint, entrypoints_of
from rpc.errors import ServiceDefinitionError
from rpc.protocol import check_service_name


@dataclasses.dataclass(frozen=True)
class Handler:
    """One method of a service with one of its entrypoints."""

    entrypoint: Entrypoint
    function: Callable[..., Any]
    signature: inspect.Signature

    @property
    def name(self) -> str:
        return self.entrypoint.method_name

    def bind(self, args: list[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Check arguments against the method's signature (self excluded).

        Raises TypeError, with the message Python would give, when they do not fit;
        a keyword the method does not take is named first, where Python would
        report a missing argument instead.
        """
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError:
            unexpected = _unexpected_keyword(self.signature, kwargs)
            if unexpected is not None:
                raise TypeError(
                    f"got an unexpected keyword argument {unexpected!r}"
                ) from None
            raise


def _unexpected_keyword(
    signature: inspect.Signature, kwargs: Mapping[str, Any]
) -> str | None:
    """The first of ``kwargs`` that no parameter of ``signature`` takes by name."""
    parameters = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return None
    for name in kwargs:
        parameter = parameters.get(name)
        if parameter is None or parameter.kind is parameter.POSITIONAL_ONLY:
            return name
    return None


@dataclasses.dataclass(frozen=True)
class ServiceDefinition:
    """A service class, checked once when it is loaded rather than on every call."""

    cls: type
    name: str
    rpc_handlers: Mapping[str, Handler]
    other_handlers: tuple[Handler, ...]
    dependencies: Mapping[str, Dependency]

    @classmethod
    def from_class(cls, service_class: type) -> ServiceDefinition:
        if not isinstance(service_class, type):
            raise ServiceDefinitionError(f"{service_class!r} is not a class")
        name = getattr(service_class, "name", None)
        if not isinstance(name, str):
            raise ServiceDefinitionError(
                f"{service_class.__qualname__} needs a class attribute 'name' (a str)"
            )
        try:
            check_service_name(name)
        except ValueError as exc:
            raise ServiceDefinitionError(str(exc)) from exc
        rpc_handlers: dict[str, Handler] = {}
        others: list[Handler] = []
        dependencies: dict[str, Dependency] = {}
        for attr in dir(service_class):
            value = inspect.getattr_static(service_class, attr)
            if isinstance(value, Dependency):
                dependencies[attr] = value
                continue
            for entrypoint in entrypoints_of(value):
                handler = Handler(entrypoint, value, _signature_without_self(value))
                if isinstance(entrypoint, RpcEntrypoint):
                    rpc_handlers[entrypoint.method_name] = handler
                    # Events that make its cached results stale: one handler each.
                    others.extend(
                        Handler(event_entrypoint, function, PAYLOAD_SIGNATURE)
                        for event_entrypoint, function in invalidation_handlers(
                            entrypoint.method_name, entrypoint.cache
                        )
                    )
                else:
                    others.append(handler)
        if not rpc_handlers and not others:
            raise ServiceDefinitionError(
                f"service {name!r} ({service_class.__qualname__}) has no entrypoints: "
                "decorate at least one method with @rpc"
            )
        return cls(service_class, name, rpc_handlers, tuple(others), dependencies)

    def describe(self) -> dict[str, Any]:
        """Methods, signatures and docstrings, as discovery reports them; timers
        too, apart, since nobody calls them."""
        described: dict[str, Any] = {
            "service": self.name,
            "methods": {
                name: _describe(handler)
                for name, handler in sorted(self.rpc_handlers.items())
            },
        }
        timers = {
            handler.name: _describe(handler)
            for handler in self.other_handlers
            if handler.entrypoint.describe().get("kind") == "timer"
        }
        if timers:
            described["timers"] = dict(sorted(timers.items()))
        return described


def _describe(handler: Handler) -> dict[str, Any]:
    return {
        "signature": str(handler.signature),
        "doc": inspect.getdoc(handler.function) or "",
        **handler.entrypoint.describe(),
    }


def _signature_without_self(function: Callable[..., Any]) -> inspect.Signature:
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    return signature.replace(parameters=parameters)


def import_service(path: str) -> type:
    """Load ``"package.module:ClassName"``, the form ``rpc run`` takes."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ServiceDefinitionError(f"expected 'module:Class', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServiceDefinitionError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        service_class = getattr(module, class_name)
    except AttributeError as exc:
        raise ServiceDefinitionError(
            f"module {module_name!r} has no attribute {class_name!r}"
        ) from exc
    if not isinstance(service_class, type):
        raise ServiceDefinitionError(f"{path} is not a class")
    return service_class
