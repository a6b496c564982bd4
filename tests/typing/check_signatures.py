"""Checked by mypy only: decorators keep a method's types."""

from __future__ import annotations

from typing_extensions import assert_type

from rpc import rpc


class Typed:
    name = "typed"

    @rpc
    def add(self, a: int, b: int) -> int:
        return a + b

    @rpc(idempotent=True)
    def label(self, value: str) -> str:
        return value


def check() -> None:
    service = Typed()
    assert_type(service.add(1, 2), int)
    assert_type(service.label("x"), str)
