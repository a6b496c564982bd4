"""Serving ``/metrics``: from a lone worker, a supervisor's children, or a gateway.

Under a supervisor, children write their metrics to files in a directory the
supervisor creates (prometheus-client's multiprocess mode) and the supervisor
serves their sum. Files of a dead child's counters stay, so totals survive a
restart; its gauges are removed when the supervisor reaps it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from rpc.config import Config
from rpc.errors import ConfigError
from rpc.observability import MULTIPROCESS_ENV
from rpc.observability.metrics import QueueCollector
from rpc.observability.queues import QueueProbe, service_queues
from rpc.service import ServiceDefinition

log = logging.getLogger(__name__)


def write_to_files() -> None:
    """Make this process's metrics write to the supervisor's directory.

    prometheus-client picks file-backed values when it is first imported, which
    in a forked child was before the directory was set: pick them now, before any
    metric is made.
    """
    values.ValueClass = values.MultiProcessValue()


def serve_registry(config: Config, registry: CollectorRegistry) -> Callable[[], None]:
    """Serve ``registry`` on ``metrics_host:metrics_port``; returns what stops it.

    Raises:
        ConfigError: the port cannot be bound (in use, or not allowed).
    """
    try:
        server, thread = start_http_server(
            config.metrics_port, addr=config.metrics_host, registry=registry
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: "
            f"{exc.strerror or exc}"
        ) from exc
    log.info(
        "metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port
    )

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def serve_worker_metrics(
    config: Config, services: Sequence[ServiceDefinition], registry: CollectorRegistry
) -> Callable[[], None]:
    """A lone worker's ``/metrics``: its registry, and its queues' depths."""
    collector = QueueCollector(QueueProbe(config, service_queues(services)))
    registry.register(collector)
    try:
        stop_serving = serve_registry(config, registry)
    except ConfigError:
        registry.unregister(collector)
        raise

    def stop() -> None:
        stop_serving()
        registry.unregister(collector)

    return stop


class SupervisorMetrics:
    """The supervisor's one ``/metrics`` for all its children.

    Made before the children are forked: it sets ``PROMETHEUS_MULTIPROC_DIR`` for
    them, to a directory of its own that :meth:`close` removes.
    """

    def __init__(self, config: Config, services: Sequence[ServiceDefinition]) -> None:
        self.directory = tempfile.mkdtemp(prefix="rpc-metrics-")
        self._previous = os.environ.get(MULTIPROCESS_ENV)
        os.environ[MULTIPROCESS_ENV] = self.directory
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.directory)
        self.registry.register(
            QueueCollector(QueueProbe(config, service_queues(services)))
        )
        try:
            self._stop = serve_registry(config, self.registry)
        except ConfigError:
            self._remove()
            raise

    def child_exited(self, pid: int) -> None:
        """A child is gone: its gauges go, its counters stay in the totals."""
        with self._lock:
            mark_process_dead(pid, self.directory)

    def close(self) -> None:
        """Stop serving and remove the directory."""
        self._stop()
        self._remove()

    def _remove(self) -> None:
        if self._previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = self._previous
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)
