"""Fixtures of the topology tests: a config on the test's vhost, runners, a client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpc import Config
from tests.integration import fixtures
from tests.integration.topology_services import RECORD, Record, Runners


@pytest.fixture
def config(broker_url: str) -> Config:
    return Config(broker_url=broker_url, default_timeout=20, max_workers=4)


@pytest.fixture
def record() -> Iterator[Record]:
    RECORD.clear()
    yield RECORD
    RECORD.clear()


@pytest.fixture
def runners(config: Config, record: Record) -> Iterator[Runners]:
    started = Runners(config)
    try:
        yield started
    finally:
        started.stop_all()


#: A client on this module's ``config``.
cluster = fixtures.cluster
