"""Checked by mypy only: decorators keep a method's types."""

from __future__ import annotations

from typing_extensions import assert_type

from rpc import Cache, rpc


class Typed:
    name = "typed"

    @rpc
    def add(self, a: int, b: int) -> int:
        return a + b

    @rpc(idempotent=True)
    def label(self, value: str) -> str:
        return value

    @rpc(idempotent=True, cache=60)
    def cached(self, value: int) -> list[int]:
        return [value]

    @rpc(idempotent=True, cache=Cache(ttl=5, version=2))
    def cached_long(self, value: int) -> dict[str, int]:
        return {"v": value}


def check() -> None:
    service = Typed()
    assert_type(service.add(1, 2), int)
    assert_type(service.label("x"), str)
    assert_type(service.cached(1), list[int])
    assert_type(service.cached_long(1), dict[str, int])
