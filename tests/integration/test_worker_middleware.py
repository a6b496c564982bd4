"""The runner's middleware on RabbitMQ: every call, cast and event runs through it."""

from __future__ import annotations

from tests.behaviour import MiddlewareBehaviour


class TestMiddlewareOnRabbitMQ(MiddlewareBehaviour):
    pass
