"""Services with their dependencies swapped: alone, or inside a runner."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar
from unittest import mock

import rpc
from rpc.context import CallContext
from rpc.dependencies import Dependency, Runtime
from rpc.errors import ServiceDefinitionError
from rpc.service import ServiceDefinition
from rpc.worker import ServiceRunner

S = TypeVar("S")


class Replacement(Dependency):
    """A dependency that hands every call the same given object (a mock, usually)."""

    def __init__(self, value: Any, *, attr_name: str = "") -> None:
        self.value = value
        self.attr_name = attr_name

    def get_dependency(self, runtime: Runtime, context: CallContext) -> Any:
        return self.value

    def __repr__(self) -> str:
        return f"Replacement({self.value!r})"


def worker_factory(service_class: type[S], **dependencies: Any) -> S:
    """An instance of ``service_class`` whose dependencies are mocks or given objects.

    Call its methods directly, as plain Python: no broker, no runner. Each declared
    dependency (``RpcProxy``, ``Settings``, ``CurrentCall`` or any other
    :class:`~rpc.Dependency`) becomes a ``MagicMock`` shaped like what the dependency
    provides, unless a keyword argument of the same name gives the object to use.

    Raises:
        ServiceDefinitionError: a keyword names no dependency of the class.
    """
    definition = ServiceDefinition.from_class(service_class)
    _check_names(definition, dependencies)
    instance = service_class()
    for attr, dependency in definition.dependencies.items():
        value = (
            dependencies[attr]
            if attr in dependencies
            else mock_dependency(dependency, name=f"{definition.name}.{attr}")
        )
        setattr(instance, attr, value)
    return instance


def mock_dependency(dependency: Dependency, *, name: str | None = None) -> Any:
    """A mock of what ``dependency`` gives a call, specced where its type allows.

    The type comes from the return annotation of its ``get_dependency``. Types that
    make up attributes on the fly (a service proxy answers any method name) get an
    unspecced ``MagicMock``, so ``proxy.hello.return_value = ...`` works.
    """
    provided = _provided_type(dependency)
    if provided is None or _has_dynamic_attributes(provided):
        return mock.MagicMock(name=name)
    return mock.create_autospec(provided, instance=True, name=name)


def replace_dependencies(
    runner: ServiceRunner, service: str, *names: str, **replacements: Any
) -> Any:
    """Give every call of ``service`` in ``runner`` other dependency objects.

    Each name in ``names`` gets a fresh mock (shaped as :func:`mock_dependency` does)
    and each keyword its given object; all calls share them, so a test can inspect
    the mock afterwards. Use it before :meth:`~rpc.ServiceRunner.start`; later, it
    applies from the next call.

    Returns:
        The mock for a single name, a tuple of mocks for several, None for none.
    """
    definition = _definition(runner, service)
    overlap = set(names) & set(replacements)
    if overlap:
        raise ValueError(f"dependencies both mocked and given: {sorted(overlap)}")
    _check_names(definition, {**dict.fromkeys(names), **replacements})
    mocks = tuple(
        mock_dependency(definition.dependencies[attr], name=f"{service}.{attr}")
        for attr in names
    )
    values = {**dict(zip(names, mocks, strict=True)), **replacements}
    dependencies = dict(definition.dependencies)
    for attr, value in values.items():
        dependencies[attr] = Replacement(value, attr_name=attr)
    runner.services[service] = dataclasses.replace(
        definition, dependencies=dependencies
    )
    if not mocks:
        return None
    return mocks[0] if len(mocks) == 1 else mocks


def restrict_entrypoints(runner: ServiceRunner, service: str, *methods: str) -> None:
    """Keep only the named entrypoints of ``service`` in ``runner``; call before start.

    Calls to a method left out get ``MethodNotFoundError``, and handlers of other kinds
    (event handlers, say) that are left out are not subscribed when the runner starts.
    """
    definition = _definition(runner, service)
    known = set(definition.rpc_handlers) | {h.name for h in definition.other_handlers}
    unknown = set(methods) - known
    if unknown:
        raise ValueError(
            f"service {service!r} has no entrypoints {sorted(unknown)} "
            f"(it has {sorted(known)})"
        )
    runner.services[service] = dataclasses.replace(
        definition,
        rpc_handlers={
            name: handler
            for name, handler in definition.rpc_handlers.items()
            if name in methods
        },
        other_handlers=tuple(h for h in definition.other_handlers if h.name in methods),
    )


def _definition(runner: ServiceRunner, service: str) -> ServiceDefinition:
    try:
        return runner.services[service]
    except KeyError:
        raise ValueError(
            f"the runner serves no {service!r} (it serves {sorted(runner.services)})"
        ) from None


def _check_names(definition: ServiceDefinition, given: Mapping[str, Any]) -> None:
    unknown = set(given) - set(definition.dependencies)
    if unknown:
        raise ServiceDefinitionError(
            f"{definition.cls.__qualname__} has no dependencies named "
            f"{', '.join(sorted(unknown))} (it has: "
            f"{', '.join(sorted(definition.dependencies)) or 'none'})"
        )


def _provided_type(dependency: Dependency) -> type | None:
    function = type(dependency).get_dependency
    # Annotations are strings (PEP 563) naming types a module may import only for
    # type checking: resolve them against the public API too.
    namespace = {**vars(rpc), **getattr(function, "__globals__", {})}
    try:
        hint = typing.get_type_hints(function, globalns=namespace).get("return")
    except Exception:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        # One of several types (a sync or an async proxy): spec only a single one.
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(options) != 1:
            return None
        hint = options[0]
    hint = typing.get_origin(hint) or hint
    if hint is collections.abc.Mapping or hint is typing.Mapping:
        return dict
    if not inspect.isclass(hint) or hint in (object, type(None), Any):
        return None
    return hint


def _has_dynamic_attributes(cls: type) -> bool:
    return any("__getattr__" in vars(base) for base in cls.__mro__[:-1])
