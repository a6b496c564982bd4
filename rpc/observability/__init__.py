"""Seeing inside a running system: metrics, traces, structured logs, ``rpc status``.

Each part is optional and costs nothing until configured: Prometheus metrics
(``metrics_port``, the ``rpc[metrics]`` extra) in :mod:`.metrics`, OpenTelemetry
spans (``tracing``, the ``rpc[otel]`` extra) in :mod:`.tracing`, JSON log lines and
slow-call warnings (``log_format``, ``slow_call_seconds``) in :mod:`.logs`, and the
``rpc status`` table in :mod:`.status`. All of them sit on the middleware seam;
this module only picks which, so importing it imports neither library.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from rpc.config import Config
from rpc.errors import ConfigError
from rpc.middleware import Middleware
from rpc.observability.observers import WorkerObserver
from rpc.service import ServiceDefinition

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from rpc.observability.metrics import ClientMetrics

#: A prometheus-client ``CollectorRegistry``, named without importing it.
MetricsRegistry: TypeAlias = "CollectorRegistry"

#: Set by a supervisor that serves its children's metrics: where they write them.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def middleware_for(config: Config) -> list[Middleware]:
    """The middlewares ``config`` turns on: tracing, then slow-call logging.

    Empty when neither is configured, so a runner or proxy pays nothing.
    """
    found: list[Middleware] = []
    if config.tracing:
        from rpc.observability.tracing import TracingMiddleware

        found.append(TracingMiddleware())
    if config.slow_call_seconds > 0:
        from rpc.observability.logs import SlowCallLog

        found.append(SlowCallLog(config.slow_call_seconds))
    return found


def client_metrics(registry: CollectorRegistry | None) -> ClientMetrics:
    """The client metrics a proxy registers in ``registry`` (default: the global)."""
    try:
        from rpc.observability.metrics import ClientMetrics
    except ImportError as exc:
        raise ConfigError(_MISSING.format(extra="metrics", exc=exc)) from exc
    return ClientMetrics.of(registry)


def default_registry() -> CollectorRegistry:
    """prometheus-client's global registry, where ``metrics_port`` serves from."""
    try:
        from prometheus_client import REGISTRY
    except ImportError as exc:
        raise ConfigError(_MISSING.format(extra="metrics", exc=exc)) from exc
    return REGISTRY


_MISSING = "this needs the {extra} extra: pip install 'rpc[{extra}]' ({exc})"


@dataclasses.dataclass
class WorkerInstruments:
    """What one worker process is instrumented with, from its config."""

    middleware: tuple[Middleware, ...] = ()
    observer: WorkerObserver | None = None
    #: Called once the runner runs, with its handler threads and loop slots.
    on_running: Callable[[int, int], None] | None = None
    #: Called when the worker stops: the /metrics server closes.
    on_stop: Callable[[], None] | None = None

    def running(self, threads: int, async_slots: int) -> None:
        if self.on_running is not None:
            self.on_running(threads, async_slots)

    def stop(self) -> None:
        if self.on_stop is not None:
            self.on_stop()


def instrument_worker(
    config: Config, services: Sequence[ServiceDefinition]
) -> WorkerInstruments:
    """Metrics for a worker process, when ``metrics_port`` is set; else nothing.

    A child of a supervisor (``PROMETHEUS_MULTIPROC_DIR`` set) only writes its
    metrics: the supervisor serves them. A lone worker serves ``/metrics`` itself.
    """
    multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
    if not config.metrics_port and not multiprocess:
        return WorkerInstruments()
    try:
        from rpc.observability import exporter
        from rpc.observability.metrics import ClientMetrics, RpcMetrics, ServerMetrics
    except ImportError as exc:
        raise ConfigError(_MISSING.format(extra="metrics", exc=exc)) from exc
    if multiprocess:
        exporter.write_to_files()
    metrics = RpcMetrics.of()
    server = ServerMetrics(metrics)
    closer: Callable[[], None] = server.stopped
    if not multiprocess:
        served = exporter.serve_worker_metrics(config, services, metrics.registry)

        def closer() -> None:
            server.stopped()
            served()

    return WorkerInstruments(
        middleware=(server, ClientMetrics(metrics)),
        observer=server,
        on_running=lambda threads, slots: server.running(
            threads=threads, async_slots=slots
        ),
        on_stop=closer,
    )
