"""Client middleware on RabbitMQ: the behaviour of tests/behaviour.py, for real."""

from __future__ import annotations

from tests.behaviour import ClientMiddlewareBehaviour


class TestClientMiddlewareOnRabbitMQ(ClientMiddlewareBehaviour):
    pass
