"""Integration tests talk to the real RabbitMQ at RPC_BROKER_URL, one vhost per test.

The ``broker_url`` fixture (a fresh vhost, deleted afterwards) and the
``--rpc-broker-url`` option come from the ``rpc.testing`` pytest plugin.
"""

from __future__ import annotations

import os

import pytest

from rpc.testing import ServiceCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_broker_url(rpc_base_broker_url: str) -> str:
    """The broker itself (its default vhost), for tests that manage vhosts alone."""
    return rpc_base_broker_url


@pytest.fixture
def rpc_broker_url(broker_url: str) -> str:
    """The toolkit's fixtures (``rpc_cluster``, ``runner_factory``) run on RabbitMQ."""
    return broker_url


@pytest.fixture
def cluster(rpc_cluster: ServiceCluster) -> ServiceCluster:
    """The behaviour tests of tests/behaviour.py, on RabbitMQ."""
    return rpc_cluster


# Fault-injection fixtures (a private RabbitMQ node, a TCP proxy), kept apart from
# the per-test vhost of the plugin.
from tests.integration.cache_fixtures import memcached_servers  # noqa: E402, F401
from tests.integration.cluster_fixtures import healthy_cluster, rabbit_cluster  # noqa: E402, F401
from tests.integration.faults import private_broker, tcp_proxy  # noqa: E402, F401
from tests.integration.tls_fixtures import tls_broker  # noqa: E402, F401
