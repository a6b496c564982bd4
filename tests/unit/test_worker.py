"""The worker's answers to requests, in memory: here, casts whose handler raises."""

from __future__ import annotations

from tests.behaviour import FailingCastBehaviour


class TestFailingCastsInMemory(FailingCastBehaviour):
    pass
