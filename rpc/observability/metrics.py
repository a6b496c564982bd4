"""Prometheus metrics of workers and clients, on the middleware seam.

Every family lives once per registry (:meth:`RpcMetrics.of`): a worker's server
side, the clients its handlers call with, and any :class:`~rpc.ClusterProxy` given
the same registry share it. Labels stay few: services, methods, kinds, outcomes,
never a correlation id or an argument. Gauges use prometheus-client's ``live*``
multiprocess modes, so under a supervisor a dead child's gauges go with it while
its counters stay in the sum.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import Any, ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import rpc
from rpc import protocol
from rpc.errors import BrokerError, CallTimeoutError, RemoteError, UnknownServiceError
from rpc.middleware import ClientCall, Middleware, Outcome, ServerCall
from rpc.observability.observers import WorkerObserver
from rpc.observability.queues import QueueProbe

#: Seconds; from a no-op round trip on one host to a slow handler.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: Bytes; up to the default ``max_message_bytes`` (16 MiB).
SIZE_BUCKETS = tuple(float(4**n * 64) for n in range(10))

_STARTED = "rpc_metrics_started"


class _Children:
    """The labelled children of one family, kept: ``labels()`` takes a lock."""

    __slots__ = ("_children", "_labels")

    def __init__(self, family: Any) -> None:
        self._labels: Callable[..., Any] = family.labels
        self._children: dict[Hashable, Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            # Two threads may both make it: labels() hands both the same child.
            child = self._children[values] = self._labels(*values)
        return child


class RpcMetrics:
    """Every metric family of rpc, registered in one registry."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, RpcMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def of(cls, registry: CollectorRegistry | None = None) -> RpcMetrics:
        """The families of ``registry`` (prometheus-client's default one if None)."""
        registry = REGISTRY if registry is None else registry
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls._by_registry[registry] = cls(registry)
            return metrics

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        service_method = ("service", "method")
        self.server_requests = Counter(
            "rpc_server_requests",
            "Requests, casts and events a worker took, by how they ended.",
            ("service", "method", "kind", "outcome"),
            registry=registry,
        )
        self.server_duration = Histogram(
            "rpc_server_request_duration_seconds",
            "Time a handler ran, middlewares included.",
            service_method,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "rpc_server_queue_wait_seconds",
            "Time from the caller's publish to the handler's start.",
            service_method,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.server_in_flight = Gauge(
            "rpc_server_in_flight",
            "Handlers running now.",
            ("service",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.redeliveries = Counter(
            "rpc_server_redeliveries",
            "Messages the broker handed out again (a worker died or disconnected).",
            ("service",),
            registry=registry,
        )
        self.cache_requests = Counter(
            "rpc_cache_requests",
            "Calls of cached methods, by what the result cache did for them.",
            ("service", "method", "result"),
            registry=registry,
        )
        self.dead_lettered = Counter(
            "rpc_server_dead_lettered",
            "Messages moved to the dead-letter queue, by reason.",
            ("service", "reason"),
            registry=registry,
        )
        self.message_size = Histogram(
            "rpc_server_message_size_bytes",
            "Body sizes of requests and events in, replies out.",
            ("service", "direction"),
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.worker_info = Gauge(
            "rpc_worker_info",
            "1 for each running worker process, labelled with its rpc version.",
            ("version",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.handler_slots = Gauge(
            "rpc_handler_slots",
            "Handler threads and event-loop slots, busy or idle.",
            ("kind", "state"),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.client_requests = Counter(
            "rpc_client_requests",
            "Calls made, by how they ended.",
            ("service", "method", "outcome"),
            registry=registry,
        )
        self.client_duration = Histogram(
            "rpc_client_request_duration_seconds",
            "Time from a call's send to its outcome.",
            service_method,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.client_in_flight = Gauge(
            "rpc_client_in_flight",
            "Calls waiting for their reply.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.client_resent = Counter(
            "rpc_client_resent",
            "Idempotent calls sent again after a lost connection.",
            service_method,
            registry=registry,
        )
        self.published = Counter(
            "rpc_published_messages",
            "Casts and events published, by the broker's confirm.",
            ("kind", "outcome"),
            registry=registry,
        )
        self.broker_connected = Gauge(
            "rpc_broker_connected",
            "Broker connections up now.",
            ("role",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.broker_reconnects = Counter(
            "rpc_broker_reconnects",
            "Times a broker connection came back after it was lost.",
            ("role",),
            registry=registry,
        )


class _ConnectionWatch:
    """Counts one connection's ups and downs under a role ("worker", "client")."""

    def __init__(self, metrics: RpcMetrics, role: str) -> None:
        self._connected = metrics.broker_connected.labels(role)
        self._reconnects = metrics.broker_reconnects.labels(role)
        self._up = False
        self._ever = False
        self._lock = threading.Lock()

    def connected(self) -> None:
        with self._lock:
            if self._up:
                return
            self._up = True
            self._connected.inc()
            if self._ever:
                self._reconnects.inc()
            self._ever = True

    def disconnected(self) -> None:
        with self._lock:
            if self._up:
                self._up = False
                self._connected.dec()


#: Seconds between two samples of the in-flight and handler-slot gauges.
SAMPLE_INTERVAL = 0.5


class ServerMetrics(Middleware, WorkerObserver):
    """The worker side: a server middleware and the worker's observer in one.

    A handler run counts itself in a plain dictionary; the gauges made from it
    (in flight, busy and idle slots) are set by a sampler every
    :data:`SAMPLE_INTERVAL` seconds, so a run pays for one lock, not six gauges.
    """

    measures_sizes = True

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics
        self._requests = _Children(metrics.server_requests)
        self._duration = _Children(metrics.server_duration)
        self._queue_wait = _Children(metrics.queue_wait)
        self._in_flight = _Children(metrics.server_in_flight)
        self._sizes = _Children(metrics.message_size)
        self._redeliveries = _Children(metrics.redeliveries)
        self._dead_lettered = _Children(metrics.dead_lettered)
        self._cache_requests = _Children(metrics.cache_requests)
        slots = metrics.handler_slots
        self._busy = {kind: slots.labels(kind, "busy") for kind in ("thread", "async")}
        self._idle = {kind: slots.labels(kind, "idle") for kind in ("thread", "async")}
        self._connection = _ConnectionWatch(metrics, "worker")
        self._info = metrics.worker_info.labels(rpc.__version__)
        #: Handlers running now, by (service, "thread" or "async").
        self._running: dict[tuple[str, str], int] = {}
        self._running_lock = threading.Lock()
        self._slots = {"thread": 0, "async": 0}
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def running(self, *, threads: int, async_slots: int) -> None:
        """This worker runs now, with so many handler threads and loop slots."""
        self._info.set(1)
        self._slots = {"thread": threads, "async": async_slots}
        self.sample()
        if self._sampler is None:
            self._stop_sampling.clear()
            self._sampler = threading.Thread(
                target=self._sample_until_stopped, name="rpc-metrics", daemon=True
            )
            self._sampler.start()

    def stopped(self) -> None:
        """This worker stopped: its gauges no longer count."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
            self._sampler = None
        self._info.set(0)
        self._connection.disconnected()
        for gauge in (*self._idle.values(), *self._busy.values()):
            gauge.set(0)

    def sample(self) -> None:
        """Set the in-flight and handler-slot gauges from the runs counted now."""
        with self._running_lock:
            running = dict(self._running)
        services: dict[str, int] = {}
        busy = {"thread": 0, "async": 0}
        for (service, kind), count in running.items():
            services[service] = services.get(service, 0) + count
            busy[kind] += count
        for service, count in services.items():
            self._in_flight(service).set(count)
        for kind, count in busy.items():
            self._busy[kind].set(count)
            self._idle[kind].set(max(self._slots[kind] - count, 0))

    def _sample_until_stopped(self) -> None:
        while not self._stop_sampling.wait(SAMPLE_INTERVAL):
            self.sample()

    # -- middleware ----------------------------------------------------------------

    def before_handler(self, call: ServerCall) -> Outcome | None:
        call.state[_STARTED] = time.perf_counter()
        context = call.context
        sent = call.headers.get(protocol.HEADER_SENT_AT)
        if type(sent) is float:
            waited = time.time() - sent
            self._queue_wait(context.service, call.method).observe(max(waited, 0.0))
        key = (context.service, "async" if context.asynchronous else "thread")
        with self._running_lock:
            self._running[key] = self._running.get(key, 0) + 1
        return None

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        started = call.state.get(_STARTED)
        if started is None:
            return  # an earlier middleware refused the call before ours ran
        context = call.context
        service = context.service
        method = call.method
        self._duration(service, method).observe(time.perf_counter() - started)
        self._requests(
            service, method, call.kind, "ok" if outcome.error is None else "error"
        ).inc()
        key = (service, "async" if context.asynchronous else "thread")
        with self._running_lock:
            self._running[key] -= 1

    # -- observer ------------------------------------------------------------------

    def received(self, service: str, size: int) -> None:
        self._sizes(service, "in").observe(size)

    def replied(self, service: str, size: int) -> None:
        self._sizes(service, "out").observe(size)

    def settled(self, service: str, method: str, kind: str, outcome: str) -> None:
        self._requests(service, method, kind, outcome).inc()

    def redelivered(self, service: str) -> None:
        self._redeliveries(service).inc()

    def cache_looked_up(self, service: str, method: str, result: str) -> None:
        self._cache_requests(service, method, result).inc()

    def dead_lettered(self, service: str, reason: str) -> None:
        self._dead_lettered(service, reason).inc()

    def connected(self) -> None:
        self._connection.connected()

    def disconnected(self) -> None:
        self._connection.disconnected()


def client_outcome(error: Exception | None) -> str:
    """How a call ended, as ``rpc_client_requests_total`` labels it."""
    if error is None:
        return "ok"
    if isinstance(error, CallTimeoutError):
        return "timeout"
    if isinstance(error, UnknownServiceError):
        return "unknown_service"
    if isinstance(error, RemoteError):
        return "remote_error"
    if isinstance(error, BrokerError):
        return "broker_error"
    return "error"


def published_outcome(error: Exception | None) -> str:
    """How a cast or an event ended, as ``rpc_published_messages_total`` labels it."""
    if error is None:
        return "ok"
    if isinstance(error, UnknownServiceError):
        return "unroutable"
    if isinstance(error, BrokerError):
        return "broker_error"
    return "error"


class ClientMetrics(Middleware):
    """The caller's side: every call, cast and event a proxy sends.

    It stamps each message with the time it was sent (``x-rpc-sent-at``), from
    which the worker measures how long it waited in the queue.
    """

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics
        self._requests = _Children(metrics.client_requests)
        self._duration = _Children(metrics.client_duration)
        self._resent = _Children(metrics.client_resent)
        self._published = _Children(metrics.published)
        self._in_flight = metrics.client_in_flight
        self._connection = _ConnectionWatch(metrics, "client")

    @classmethod
    def of(cls, registry: CollectorRegistry | None = None) -> ClientMetrics:
        """Client metrics in ``registry`` (prometheus-client's default if None)."""
        return cls(RpcMetrics.of(registry))

    def before_send(self, call: ClientCall) -> None:
        call.headers[protocol.HEADER_SENT_AT] = time.time()
        call.state[_STARTED] = time.perf_counter()
        if call.kind == "call":
            self._in_flight.inc()

    def after_send(self, call: ClientCall, outcome: Outcome) -> None:
        started = call.state.get(_STARTED)
        if started is None:
            return
        if call.kind == "call":
            self._in_flight.dec()
            self._duration(call.service, call.method).observe(
                time.perf_counter() - started
            )
            self._requests(
                call.service, call.method, client_outcome(outcome.error)
            ).inc()
        else:
            self._published(call.kind, published_outcome(outcome.error)).inc()

    # -- what the proxy tells it ---------------------------------------------------

    def resent(self, service: str, method: str) -> None:
        self._resent(service, method).inc()

    def connected(self) -> None:
        self._connection.connected()

    def disconnected(self) -> None:
        self._connection.disconnected()


class QueueCollector(Collector):
    """``rpc_queue_messages`` and ``rpc_queue_consumers``, read at scrape time."""

    def __init__(self, probe: QueueProbe) -> None:
        self._probe = probe

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Named here so that registering reads no queue.
        return [self._messages(), self._consumers()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        messages, consumers = self._messages(), self._consumers()
        for queue, state in sorted(self._probe.states().items()):
            if state is not None:
                messages.add_metric([queue], state.messages)
                consumers.add_metric([queue], state.consumers)
        return [messages, consumers]

    @staticmethod
    def _messages() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "rpc_queue_messages",
            "Messages ready in the queue (a passive declare, at most every 5 s).",
            labels=["queue"],
        )

    @staticmethod
    def _consumers() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "rpc_queue_consumers",
            "Consumers of the queue (a passive declare, at most every 5 s).",
            labels=["queue"],
        )
