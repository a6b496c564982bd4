"""The example services on RabbitMQ: the behaviour of tests/behaviour.py, for real."""

from __future__ import annotations

from tests.behaviour import (
    CacheBehaviour,
    ComputeBehaviour,
    ConciergeBehaviour,
    GreeterBehaviour,
    PiMeshBehaviour,
    ShopBehaviour,
)


class TestGreeterOnRabbitMQ(GreeterBehaviour):
    pass


class TestComputeOnRabbitMQ(ComputeBehaviour):
    pass


class TestShopOnRabbitMQ(ShopBehaviour):
    pass


class TestConciergeOnRabbitMQ(ConciergeBehaviour):
    pass


class TestPiMeshOnRabbitMQ(PiMeshBehaviour):
    pass


class TestCacheOnRabbitMQ(CacheBehaviour):
    pass
