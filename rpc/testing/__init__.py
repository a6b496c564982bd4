"""Testing services: alone with mocks, in memory in one process, or on RabbitMQ.

Also a pytest plugin (``rpc.testing.pytest_plugin``, installed with rpc) with the
fixtures ``rpc_cluster``, ``runner_factory``, ``cluster_proxy``, ``broker_url`` and
``memory_broker_url``.
"""

from __future__ import annotations

from rpc.cache.backend import MemoryBackend
from rpc.testing.cluster import MEMORY_BROKER_URL, ServiceCluster
from rpc.testing.dependencies import (
    Replacement,
    mock_dependency,
    replace_dependencies,
    restrict_entrypoints,
    worker_factory,
)
from rpc.testing.hooks import (
    EntrypointHook,
    HandlerRun,
    entrypoint_hook,
    entrypoint_waiter,
)
from rpc.testing.vhosts import VirtualHosts
from rpc.transport import reset_memory_broker

__all__ = [
    "MEMORY_BROKER_URL",
    "EntrypointHook",
    "HandlerRun",
    "MemoryBackend",
    "Replacement",
    "ServiceCluster",
    "VirtualHosts",
    "entrypoint_hook",
    "entrypoint_waiter",
    "mock_dependency",
    "replace_dependencies",
    "reset_memory_broker",
    "restrict_entrypoints",
    "worker_factory",
]
