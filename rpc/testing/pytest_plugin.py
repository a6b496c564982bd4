"""pytest fixtures for services: in-memory runs, and a fresh vhost per test on RabbitMQ.

Installed with rpc through a ``pytest11`` entry point, so any project that depends on
rpc gets these fixtures without a conftest line. Options (or environment):

``--rpc-broker-url`` (``RPC_BROKER_URL``)
    the RabbitMQ that ``broker_url`` makes vhosts on; default the local one.
``--rpc-management-url`` (``RPC_MANAGEMENT_URL``)
    its management HTTP API; default port 15672 on the broker's host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rpc.config import DEFAULT_BROKER_URL, Config
from rpc.proxy import ClusterProxy
from rpc.testing.cluster import MEMORY_BROKER_URL, ServiceCluster
from rpc.testing.vhosts import VirtualHosts
from rpc.transport import reset_memory_broker
from rpc.worker import ServiceRunner

BROKER_URL_ENV = "RPC_BROKER_URL"
MANAGEMENT_URL_ENV = "RPC_MANAGEMENT_URL"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rpc", "rpc services")
    group.addoption(
        "--rpc-broker-url",
        default=None,
        help=f"RabbitMQ for broker tests (default: ${BROKER_URL_ENV}, else "
        f"{DEFAULT_BROKER_URL})",
    )
    group.addoption(
        "--rpc-management-url",
        default=None,
        help=f"its management API (default: ${MANAGEMENT_URL_ENV}, else port "
        "15672 of the broker's host)",
    )


@pytest.fixture(scope="session")
def rpc_base_broker_url(pytestconfig: pytest.Config) -> str:
    """The RabbitMQ the test session uses: option, then environment, then local."""
    option: str | None = pytestconfig.getoption("rpc_broker_url")
    return option or os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL


@pytest.fixture(scope="session")
def rpc_vhosts(
    pytestconfig: pytest.Config, rpc_base_broker_url: str
) -> Iterator[VirtualHosts]:
    """Makes and deletes the per-test vhosts of ``broker_url``."""
    option: str | None = pytestconfig.getoption("rpc_management_url")
    vhosts = VirtualHosts(
        rpc_base_broker_url,
        management_url=option or os.environ.get(MANAGEMENT_URL_ENV),
    )
    yield vhosts
    vhosts.close()


@pytest.fixture
def broker_url(rpc_vhosts: VirtualHosts) -> Iterator[str]:
    """A URL to a fresh vhost of the real RabbitMQ, deleted after the test.

    Where no vhost can be made (no management API, and a remote broker), it is the
    broker's own URL: tests then keep apart through unique names.
    """
    url = rpc_vhosts.create()
    try:
        yield url
    finally:
        rpc_vhosts.delete_later(url)


@pytest.fixture
def memory_broker_url() -> Iterator[str]:
    """Kombu's in-memory transport, emptied before and after the test."""
    reset_memory_broker()
    try:
        yield MEMORY_BROKER_URL
    finally:
        reset_memory_broker()


@pytest.fixture
def rpc_broker_url(memory_broker_url: str) -> str:
    """Where ``rpc_cluster`` runs: in memory, unless a conftest overrides this.

    Override it with ``broker_url`` to run the same tests on RabbitMQ.
    """
    return memory_broker_url


@pytest.fixture
def rpc_config(rpc_broker_url: str) -> Config:
    """Settings for the test's runners and proxies; override to change them."""
    return Config(broker_url=rpc_broker_url, default_timeout=30.0)


@pytest.fixture
def rpc_cluster(rpc_config: Config) -> Iterator[ServiceCluster]:
    """A :class:`~rpc.testing.ServiceCluster`: start services, call them, all stopped
    after the test."""
    cluster = ServiceCluster(config=rpc_config)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def runner_factory(rpc_cluster: ServiceCluster) -> Callable[..., ServiceRunner]:
    """``runner_factory(*services, **settings)``: a runner not started yet (adjust
    it with ``replace_dependencies``, then ``start()``); stopped after the test."""

    def make(*services: type, **settings: Any) -> ServiceRunner:
        return rpc_cluster.runner(*services, **settings)

    return make


@pytest.fixture
def cluster_proxy(rpc_cluster: ServiceCluster) -> ClusterProxy:
    """A started proxy to the test's services, closed after the test."""
    return rpc_cluster.proxy
