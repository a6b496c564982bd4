"""The ServiceRunner facade: one worker process's services, connection and pool."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import rpc
from rpc.async_proxy import AsyncClusterProxy
from rpc.cache.middleware import ResultCache, cache_middleware
from rpc.config import Config
from rpc.context import CallContext
from rpc.entrypoints import is_coroutine_function
from rpc.errors import BrokerError, ServiceDefinitionError
from rpc.logs import status
from rpc.middleware import Middleware, load_middleware
from rpc.observability import middleware_for
from rpc.observability.observers import QUIET, WorkerObserver
from rpc.proxy import BaseClusterProxy, ClusterProxy
from rpc.serialization import JsonValue
from rpc.service import Handler, ServiceDefinition
from rpc.tls import connection_options
from rpc.transport import BrokerConnection
from rpc.worker import topology
from rpc.worker.admission import RequestAdmission
from rpc.worker.consumers import Consumer, DiscoveryResponder, Worker, consumers_for
from rpc.worker.dispatch import Dispatcher
from rpc.worker.failures import FailurePolicy
from rpc.worker.invoke import Direct, HandlerObserver, Invoker
from rpc.worker.replies import ReplyPublisher
from rpc.worker.retry_queues import RetryQueues

log = logging.getLogger(__name__)

HANDED_BACK = "%s: %d deliveries after cancel returned to the queue"
DRAINING = "%s: draining %d calls (up to %g s)"
STOPPED = "%s: stopped"
DRAIN_LATE = "%s: %d calls still running after shutdown_timeout; waiting for them"

#: Transports without message TTLs: failed events and casts run again at once.
_NO_TTL_SCHEMES = ("memory",)

_Client = TypeVar("_Client", ClusterProxy, AsyncClusterProxy)


class ServiceRunner:
    """Runs one or more services in this process, on one connection and one pool.

    Plain handlers run on up to ``max_workers`` threads. ``async def`` handlers run on
    one event loop thread, up to ``max_async`` at once. The channel's prefetch is
    :attr:`prefetch`: ``max_workers``, plus ``max_async`` when some handler is async,
    so the broker never hands this process more than it can run: the rest stays in
    the queue for other workers.

    ``middleware`` wraps every handler run, before those ``config.middleware``
    names; the clients handlers call other services with get the same list. Those
    the config turns on (tracing, slow-call logs) come first. ``observer`` hears
    of what no middleware sees (see :mod:`rpc.observability.observers`).
    """

    def __init__(
        self,
        services: Iterable[type],
        config: Config | None = None,
        *,
        middleware: Iterable[Middleware] = (),
        observer: WorkerObserver | None = None,
    ) -> None:
        self.config = config if config is not None else Config.load()
        definitions = [ServiceDefinition.from_class(cls) for cls in services]
        names = [definition.name for definition in definitions]
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            raise ServiceDefinitionError(
                f"services named twice in one runner: {', '.join(sorted(duplicates))}"
            )
        if not definitions:
            raise ServiceDefinitionError("a runner needs at least one service")
        self.services: dict[str, ServiceDefinition] = {d.name: d for d in definitions}
        #: Given in code: the clients of handlers get these too, and load
        #: ``config.middleware`` themselves.
        self._given_middleware = tuple(middleware)
        self.middleware: tuple[Middleware, ...] = (
            *middleware_for(self.config),
            *self._given_middleware,
            *load_middleware(self.config.middleware),
        )
        # A result cache when a method is cached, innermost: the others (say,
        # authentication) run before a hit is answered. None otherwise.
        self._result_cache = cache_middleware(definitions, self.config, self.middleware)
        self.middleware += self._result_cache
        self._observer = QUIET if observer is None else observer
        for chained in self.middleware:
            if isinstance(chained, ResultCache):
                # Counted in the worker's metrics too (rpc_cache_requests_total).
                chained.stats.listener = self._observer.cache_looked_up
        self._started_at = time.time()
        #: Names this process's own queues (broadcast events, sharded calls).
        self.instance_id = uuid.uuid4().hex[:12]
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{self.instance_id}"
        self.has_async = any(
            is_coroutine_function(handler.function)
            for d in definitions
            for handler in (*d.rpc_handlers.values(), *d.other_handlers)
        )
        self._name = "-".join(self.services)
        #: The clients handlers call other services with, by type, made on first use.
        self._clients: dict[type[BaseClusterProxy], BaseClusterProxy] = {}
        self._cluster_lock = threading.Lock()
        self._consumers: list[Consumer] = []
        self._connection = BrokerConnection(
            self.config.broker_url,
            name=self._name,
            heartbeat=self.config.heartbeat,
            connect_timeout=self.config.connect_timeout,
            on_connect=self._set_up,
            # Copies sent in place of a message are confirmed before its ack.
            confirms=self.config.copies == "confirmed",
            on_disconnect=lambda exc: self._observer.disconnected(),
            # Alive but deaf is worse than dead: the supervisor restarts a worker.
            exit_on_reader_death=True,
            node_timeout=self.config.node_connect_timeout,
            listed_order=self.config.broker_order == "listed",
            **connection_options(self.config),
        )
        self._invoker = Invoker(self, self.middleware)
        self._dispatcher = Dispatcher(
            self.config,
            self._connection,
            self._invoker,
            has_async=self.has_async,
            name=self._name,
        )
        scheme = urllib.parse.urlsplit(self.config.broker_url).scheme
        failures = FailurePolicy(
            self._connection,
            self.config,
            RetryQueues(self._connection, queue_type=self.config.queue_type),
            delays_retries=scheme not in _NO_TTL_SCHEMES,
            observer=self._observer,
        )
        replies = ReplyPublisher(
            self._connection,
            limit=self.config.max_message_bytes,
            observer=self._observer,
        )
        self._worker = Worker(
            connection=self._connection,
            config=self.config,
            services=self.services,
            instance_id=self.instance_id,
            worker_id=self.worker_id,
            dispatcher=self._dispatcher,
            invoker=self._invoker,
            admission=RequestAdmission(
                self._connection, self.config, failures, replies, self._observer
            ),
            failures=failures,
            replies=replies,
            observer=self._observer,
            live=self.live,
        )

    # -- what dependencies see (the Runtime protocol) ------------------------------

    @property
    def cluster(self) -> ClusterProxy:
        """A client for calls from handlers to other services, made on first use."""
        return self._client(ClusterProxy)

    @property
    def async_cluster(self) -> AsyncClusterProxy:
        """The awaitable client of async handlers; only used on the runner's loop."""
        return self._client(AsyncClusterProxy)

    def _client(self, kind: type[_Client]) -> _Client:
        with self._cluster_lock:
            client = self._clients.get(kind)
            if not isinstance(client, kind):
                # Given in code, the runner's middleware goes to its clients too;
                # those named in the config they load themselves.
                client = kind(
                    config=self.config,
                    name=self._name,
                    middleware=self._given_middleware,
                )
                self._clients[kind] = client
            return client

    @property
    def prefetch(self) -> int:
        """Unacknowledged requests the broker may hand this process at once."""
        extra = self.config.max_async if self.has_async else 0
        return self.config.max_workers + extra

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Connect, declare the service queues and start consuming."""
        self._started_at = time.time()
        self._worker.accepting = True
        self._dispatcher.stopping = False
        self._dispatcher.start_loop()
        self._connection.start()
        self._dispatcher.start_threads()
        log.info(
            "serving %s on %s (max_workers=%d, prefetch=%d)",
            ", ".join(self.services),
            self._connection.node,
            self.config.max_workers,
            self.prefetch,
        )

    def stop(self) -> None:
        """Graceful stop: stop consuming, finish handlers in progress, then close."""
        self._stop_accepting()
        for consumer in self._consumers:
            # A connection that is gone took its consumers along.
            with contextlib.suppress(BrokerError):
                consumer.stop()
        in_flight = self._dispatcher.in_flight
        if in_flight:
            status.info(DRAINING, self._name, in_flight, self.config.shutdown_timeout)
        if not self._dispatcher.wait_idle(self.config.shutdown_timeout):
            log.warning(DRAIN_LATE, self._name, self._dispatcher.in_flight)
        self._dispatcher.shutdown(wait=True)
        self._close()
        status.info(STOPPED, self._name)

    def kill(self) -> None:
        """Stop now: unacknowledged requests go back to the queue for other workers."""
        self._stop_accepting()
        self._dispatcher.shutdown(wait=False, cancel_pending=True)
        self._close()

    def _stop_accepting(self) -> None:
        self._worker.accepting = False
        self._dispatcher.stopping = True

    def _close(self) -> None:
        self._connection.stop()
        for consumer in self._consumers:
            consumer.close()
        with self._cluster_lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client._stop_connection()
        self._dispatcher.close_loop()
        for result_cache in self._result_cache:
            result_cache.close()
        handed_back, self._worker.handed_back = self._worker.handed_back, 0
        if handed_back:
            log.info(HANDED_BACK, self._name, handed_back)

    def __enter__(self) -> ServiceRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """True while the broker connection is up; False while it reconnects."""
        return self._connection.connected

    @property
    def in_flight(self) -> int:
        """Requests taken from the broker and not yet acknowledged."""
        return self._dispatcher.in_flight

    def live(self) -> dict[str, Any]:
        """What this worker is doing now, as ``rpc status`` shows it."""
        dispatcher = self._dispatcher
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": rpc.__version__,
            "uptime": round(time.time() - self._started_at, 3),
            "in_flight": dispatcher.in_flight,
            "served": dispatcher.served,
            "errors": dispatcher.errors,
        }

    # -- the consumers -------------------------------------------------------------

    def _set_up(self, channel: Any) -> None:
        """Declare everything and consume, on every (re)connection."""
        for old in self._consumers:
            old.close()
        consumers: list[Consumer] = [
            consumer
            for service in self.services.values()
            for consumer in consumers_for(self._worker, service)
        ]
        consumers.append(DiscoveryResponder(self._worker, self._name))
        held = sum(consumer.holds for consumer in consumers)
        topology.declare_worker(
            channel, prefetch=self.prefetch + held, queue_type=self.config.queue_type
        )
        for service in self.services.values():
            topology.declare_dead_letter_queue(
                channel,
                service.name,
                queue_type=self.config.queue_type,
                placement=self.config.quorum_placement(),
            )
        for consumer in consumers:
            consumer.start(channel)
        self._consumers = consumers
        self._observer.connected()

    # -- handler runs --------------------------------------------------------------

    def invoke(
        self, service: ServiceDefinition, handler: Handler, context: CallContext
    ) -> JsonValue:
        """Make a fresh service instance with its dependencies and call the handler,
        through the middleware chain (as a call)."""
        return self._invoker.invoke(Direct(service), handler, context)

    def observe(self, observer: HandlerObserver) -> Callable[[], None]:
        """Call ``observer`` after every handler run; returns what removes it.

        For test tools (``rpc.testing.entrypoint_waiter``): it runs on the handler's
        thread, and an exception it raises is logged, never given to the caller.
        """
        return self._invoker.observe(observer)
