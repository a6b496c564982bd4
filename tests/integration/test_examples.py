"""The example services on RabbitMQ: the behaviour of tests/behaviour.py, for real."""

from __future__ import annotations

from tests.behaviour import ComputeBehaviour, GreeterBehaviour


class TestGreeterOnRabbitMQ(GreeterBehaviour):
    pass


class TestComputeOnRabbitMQ(ComputeBehaviour):
    pass
