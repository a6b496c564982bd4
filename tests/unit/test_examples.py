"""The example services, in memory: the behaviour of tests/behaviour.py, no broker."""

from __future__ import annotations

from tests.behaviour import ComputeBehaviour, GreeterBehaviour


class TestGreeterInMemory(GreeterBehaviour):
    pass


class TestComputeInMemory(ComputeBehaviour):
    pass
