"""Fixtures several integration modules share, each on the module's own ``config``.

A module takes one by naming it, as in ``runner = fixtures.runner``: pytest finds
fixtures in a test module's namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from rpc import ClusterProxy, Config, ServiceRunner
from tests.integration.ledger_service import Ledger


@pytest.fixture
def cluster(config: Config) -> Iterator[ClusterProxy]:
    with ClusterProxy(config=config) as proxy:
        yield proxy


@pytest.fixture
def runner(config: Config) -> Iterator[ServiceRunner]:
    """The Ledger service, run in this process."""
    runner = ServiceRunner([Ledger], config)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def tokens(count: int) -> list[str]:
    """Tokens for Ledger calls, unique to one test: the Ledger counts runs by token."""
    return [uuid.uuid4().hex for _ in range(count)]
