"""The example services, in memory: the behaviour of tests/behaviour.py, no broker."""

from __future__ import annotations

from tests.behaviour import (
    CacheBehaviour,
    ComputeBehaviour,
    ConciergeBehaviour,
    GreeterBehaviour,
    PiMeshBehaviour,
    ShopBehaviour,
)


class TestGreeterInMemory(GreeterBehaviour):
    pass


class TestComputeInMemory(ComputeBehaviour):
    pass


class TestShopInMemory(ShopBehaviour):
    pass


class TestConciergeInMemory(ConciergeBehaviour):
    pass


class TestPiMeshInMemory(PiMeshBehaviour):
    pass


class TestCacheInMemory(CacheBehaviour):
    pass
