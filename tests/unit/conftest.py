"""Unit tests need no broker: services run on Kombu's in-memory transport."""

from __future__ import annotations

import pytest

from rpc.testing import ServiceCluster


@pytest.fixture
def cluster(rpc_cluster: ServiceCluster) -> ServiceCluster:
    """The behaviour tests of tests/behaviour.py, in memory."""
    return rpc_cluster
