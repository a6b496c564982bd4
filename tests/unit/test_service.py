"""Service classes are checked once, when they are loaded."""

from __future__ import annotations

import pytest

from rpc import RpcProxy, Settings, rpc
from rpc.errors import ServiceDefinitionError
from rpc.service import ServiceDefinition, import_service


class Calculator:
    name = "calculator"
    other = RpcProxy("other")
    settings = Settings()

    @rpc
    def add(self, a: int, b: int = 0) -> int:
        """Add two numbers."""
        return a + b

    @rpc(idempotent=True)
    def square(self, x: int) -> int:
        return x * x

    def helper(self) -> None:
        """Not an entrypoint."""


def test_entrypoints_and_dependencies_are_found():
    definition = ServiceDefinition.from_class(Calculator)
    assert definition.name == "calculator"
    assert set(definition.rpc_handlers) == {"add", "square"}
    assert set(definition.dependencies) == {"other", "settings"}
    assert definition.rpc_handlers["square"].entrypoint.idempotent  # type: ignore[attr-defined]


def test_signature_excludes_self_and_binds_like_python():
    handler = ServiceDefinition.from_class(Calculator).rpc_handlers["add"]
    handler.bind([1], {"b": 2})
    with pytest.raises(TypeError):
        handler.bind([], {})
    with pytest.raises(TypeError):
        handler.bind([1, 2, 3], {})


def test_decorated_methods_stay_plain_methods():
    assert Calculator().add(2, 3) == 5


def test_describe_lists_methods_with_signatures_and_docs():
    description = ServiceDefinition.from_class(Calculator).describe()
    assert (
        description["methods"]["add"]["signature"]
        == "(a: 'int', b: 'int' = 0) -> 'int'"
    )
    assert description["methods"]["add"]["doc"] == "Add two numbers."
    assert description["methods"]["square"]["idempotent"] is True


def test_a_class_without_name_is_refused():
    class Nameless:
        @rpc
        def m(self) -> None: ...

    with pytest.raises(ServiceDefinitionError, match="'name'"):
        ServiceDefinition.from_class(Nameless)


def test_a_class_without_entrypoints_is_refused():
    class Empty:
        name = "empty"

    with pytest.raises(ServiceDefinitionError, match="no entrypoints"):
        ServiceDefinition.from_class(Empty)


def test_a_name_that_cannot_route_is_refused():
    class Dotted:
        name = "a.b"

        @rpc
        def m(self) -> None: ...

    with pytest.raises(ServiceDefinitionError, match="invalid service name"):
        ServiceDefinition.from_class(Dotted)


def test_import_service():
    assert import_service("tests.unit.test_service:Calculator") is Calculator
    for bad, message in [
        ("no_colon", "module:Class"),
        ("not_a_module_xyz:C", "cannot import"),
        ("tests.unit.test_service:Missing", "no attribute"),
        ("tests.unit.test_service:pytest", "not a class"),
    ]:
        with pytest.raises(ServiceDefinitionError, match=message):
            import_service(bad)
