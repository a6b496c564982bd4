"""One worker process: consume service queues, run handlers, reply, then ack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from rpc import deadletter, events, protocol, serialization
from rpc.async_proxy import AsyncClusterProxy
from rpc.config import Config
from rpc.context import CallContext, serving
from rpc.entrypoints import (
    EventHandlerEntrypoint,
    RpcEntrypoint,
    is_coroutine_function,
)
from rpc.errors import (
    BrokerError,
    InvalidArgumentsError,
    MalformedRequestError,
    MethodNotFoundError,
    SerializationError,
    ServiceDefinitionError,
)
from rpc.handler_pool import HandlerPool
from rpc.proxy import BaseClusterProxy, ClusterProxy
from rpc.serialization import JsonValue
from rpc.service import Handler, ServiceDefinition
from rpc.transport import BrokerConnection, Delivery

log = logging.getLogger(__name__)

HANDLER_FAILED = "%s.%s failed: %s"
DROPPED_EXPIRED = "%s.%s: dropped, its caller's deadline passed %.3fs ago"
POISON = "%s: a request was delivered %d times and never acknowledged: poison"
POISON_EVENT = "%s.%s: an event was delivered %d times and never acknowledged: poison"
DEAD_LETTERED = "%s: message moved to the dead-letter queue (%s): %s"

#: Framework rejections of a request that wants no reply: dead-lettered, with why.
REJECTIONS = {
    "MethodNotFoundError": deadletter.REASON_METHOD_NOT_FOUND,
    "InvalidArgumentsError": deadletter.REASON_INVALID_ARGUMENTS,
}
#: Message properties a requeued or dead-lettered copy keeps.
COPIED_PROPERTIES = (
    "correlation_id",
    "reply_to",
    "delivery_mode",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)

#: Seconds after which a worker declares a retry queue again, renewing its lease
#: (``x-expires``); far below :data:`rpc.protocol.RETRY_QUEUE_IDLE_MS`.
RETRY_QUEUE_REDECLARE = 60.0
#: Transports without message TTLs: failed events and casts run again at once.
_NO_TTL_SCHEMES = ("memory",)

#: Sees every handler run: its context, handler, and result or exception.
HandlerObserver = Callable[[CallContext, Handler, JsonValue, Exception | None], None]
_Client = TypeVar("_Client", ClusterProxy, AsyncClusterProxy)


class ServiceRunner:
    """Runs one or more services in this process, on one connection and one pool.

    Plain handlers run on up to ``max_workers`` threads. ``async def`` handlers run on
    one event loop thread, up to ``max_async`` at once. The channel's prefetch is
    :attr:`prefetch`: ``max_workers``, plus ``max_async`` when some handler is async,
    so the broker never hands this process more than it can run: the rest stays in
    the queue for other workers.
    """

    def __init__(self, services: Iterable[type], config: Config | None = None) -> None:
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
        self._consumers: dict[str, str] = {}  # consumer tag -> service name
        #: Consumers of this process's shard queues: classic, whatever queue_type says.
        self._shard_consumers: set[str] = set()
        # consumer tag -> the event handler its queue feeds
        self._event_consumers: dict[str, tuple[ServiceDefinition, Handler]] = {}
        #: Names this process's own queues (broadcast events, sharded calls).
        self.instance_id = uuid.uuid4().hex[:12]
        self._in_flight = 0
        self._in_flight_lock = threading.Condition()
        self._accepting = False
        #: The clients handlers call other services with, by type, made on first use.
        self._clients: dict[type[BaseClusterProxy], BaseClusterProxy] = {}
        self._cluster_lock = threading.Lock()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{self.instance_id}"
        self.has_async = any(
            is_coroutine_function(handler.function)
            for d in definitions
            for handler in (*d.rpc_handlers.values(), *d.other_handlers)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._async_slots = asyncio.Semaphore(self.config.max_async)
        self._observers: tuple[HandlerObserver, ...] = ()
        # Retry queues declared on connection generation _retry_generation: name ->
        # when (monotonic), so each is declared once per connection, then now and then.
        self._retry_queues: dict[str, float] = {}
        self._retry_generation = -1
        self._retry_lock = threading.Lock()
        scheme = urllib.parse.urlsplit(self.config.broker_url).scheme
        self._delays_retries = scheme not in _NO_TTL_SCHEMES
        self._connection = BrokerConnection(
            self.config.broker_url,
            name="-".join(self.services),
            heartbeat=self.config.heartbeat,
            connect_timeout=self.config.connect_timeout,
            on_connect=self._set_up,
        )
        self._pool: HandlerPool[Delivery] = HandlerPool(
            self.config.max_workers, self._handle, connection=self._connection
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
                client = kind(config=self.config, name="-".join(self.services))
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
        self._accepting = True
        if self.has_async and self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever,
                name=f"rpc-loop-{'-'.join(self.services)}",
                daemon=True,
            )
            self._loop_thread.start()
        self._connection.start()
        self._pool.start()
        log.info(
            "serving %s on %s (max_workers=%d, prefetch=%d)",
            ", ".join(self.services),
            self._connection.url.rsplit("@", 1)[-1],
            self.config.max_workers,
            self.prefetch,
        )

    def stop(self) -> None:
        """Graceful stop: stop consuming, finish handlers in progress, then close."""
        self._accepting = False
        try:
            for tag in [*self._consumers, *self._event_consumers]:
                self._connection.cancel(tag)
        except BrokerError:
            pass
        self._wait_idle(self.config.shutdown_timeout)
        self._pool.shutdown(wait=True)
        self._close()

    def kill(self) -> None:
        """Stop now: unacknowledged requests go back to the queue for other workers."""
        self._accepting = False
        self._pool.shutdown(wait=False, cancel_pending=True)
        self._close()

    def _close(self) -> None:
        self._connection.stop()
        with self._cluster_lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client._stop_connection()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(_cancel_all_and_stop, loop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            if not loop.is_running():
                loop.close()

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
        return self._in_flight

    def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._in_flight_lock:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._in_flight_lock.wait(remaining)
        return True

    # -- the consumer --------------------------------------------------------------

    def _set_up(self, channel: Any) -> None:
        channel.exchange_declare(
            exchange=protocol.RPC_EXCHANGE,
            type="topic",
            durable=True,
            auto_delete=False,
        )
        # Prefetch for the whole channel: every service of this process together
        # never holds more unacknowledged requests than it has handler slots.
        # Quorum queues refuse a channel-wide prefetch: there it is per consumer.
        channel.basic_qos(0, self.prefetch, self.config.queue_type != "quorum")
        self._declare_dead_letter_exchanges(channel)
        self._consumers.clear()
        self._event_consumers.clear()
        for name in self.services:
            queue = protocol.service_queue(name)
            self._declare_dead_letter_queue(channel, name)
            channel.queue_declare(
                queue=queue,
                durable=True,
                auto_delete=False,
                exclusive=False,
                arguments=deadletter.queue_arguments(
                    name,
                    queue_type=self.config.queue_type,
                    delivery_limit=self.config.delivery_limit,
                ),
            )
            channel.queue_bind(
                queue=queue,
                exchange=protocol.RPC_EXCHANGE,
                routing_key=protocol.service_binding(name),
            )
            tag = self._connection.consume(
                channel, queue, self._on_delivery, consumer_tag=f"rpc-{name}-{id(self)}"
            )
            self._consumers[tag] = name
            if _is_sharded(self.services[name]):
                self._consume_shard(channel, name)
            self._subscribe(channel, self.services[name])
        self._set_up_discovery(channel)

    def _consume_shard(self, channel: Any, name: str) -> None:
        # Sharded calls: rpc --<service>.<method>.shard--> the service's
        # consistent-hash exchange, which hashes the shard key header onto the
        # queues of the live workers (RabbitMQ's consistent-hash exchange plugin).
        exchange = protocol.shard_exchange(name)
        channel.exchange_declare(
            exchange=exchange,
            type=protocol.SHARD_EXCHANGE_TYPE,
            durable=True,
            auto_delete=False,
            arguments={"hash-header": protocol.HEADER_SHARD_KEY},
        )
        channel.exchange_bind(
            destination=exchange,
            source=protocol.RPC_EXCHANGE,
            routing_key=protocol.shard_binding(name),
        )
        queue = protocol.shard_queue(name, self.instance_id)
        channel.queue_declare(
            queue=queue, durable=False, exclusive=True, auto_delete=True
        )
        channel.queue_bind(
            queue=queue, exchange=exchange, routing_key=str(protocol.SHARD_WEIGHT)
        )
        tag = self._connection.consume(
            channel,
            queue,
            self._on_delivery,
            consumer_tag=f"rpc-{name}-shard-{id(self)}",
        )
        self._consumers[tag] = name
        self._shard_consumers.add(tag)

    def _subscribe(self, channel: Any, service: ServiceDefinition) -> None:
        subscriptions = [
            handler
            for handler in service.other_handlers
            if isinstance(handler.entrypoint, EventHandlerEntrypoint)
        ]
        if not subscriptions:
            return
        events.declare_exchange(channel)
        for handler in subscriptions:
            assert isinstance(handler.entrypoint, EventHandlerEntrypoint)
            queue = events.declare_subscription(
                channel,
                service.name,
                handler.entrypoint,
                instance=self.instance_id,
                arguments=self._queue_arguments(),
            )
            tag = self._connection.consume(
                channel,
                queue,
                self._on_delivery,
                consumer_tag=f"rpc-{service.name}-{handler.name}-{id(self)}",
            )
            self._event_consumers[tag] = (service, handler)

    def _set_up_discovery(self, channel: Any) -> None:
        # A private queue on the discovery fanout: every worker answers every request.
        channel.exchange_declare(
            exchange=protocol.DISCOVERY_EXCHANGE,
            type="fanout",
            durable=True,
            auto_delete=False,
        )
        declared = channel.queue_declare(
            queue="", exclusive=True, auto_delete=True, durable=False
        )
        queue = declared.queue if hasattr(declared, "queue") else declared[0]
        channel.queue_bind(queue=queue, exchange=protocol.DISCOVERY_EXCHANGE)
        # no_ack: discovery requests are cheap to lose and must not take prefetch.
        self._connection.consume(channel, queue, self._on_discovery, no_ack=True)

    def _on_discovery(self, delivery: Delivery) -> None:
        """Describe this worker's services to whoever asked (on the reading thread)."""
        if not delivery.reply_to or not self._accepting:
            return
        body = serialization.encode(
            protocol.discovery_reply(
                self.worker_id,
                [definition.describe() for definition in self.services.values()],
            )
        )
        self._connection.publish(
            body,
            exchange="",
            routing_key=delivery.reply_to,
            content_type=serialization.CONTENT_TYPE,
            correlation_id=delivery.correlation_id,
            delivery_mode=1,
        )

    def _queue_arguments(self) -> dict[str, Any]:
        if self.config.queue_type == "quorum":
            return {"x-queue-type": "quorum"}
        return {}

    def _declare_dead_letter_exchanges(self, channel: Any) -> None:
        channel.exchange_declare(
            exchange=protocol.DEAD_LETTER_EXCHANGE,
            type="direct",
            durable=True,
            auto_delete=False,
        )
        if self.config.queue_type == "quorum":
            channel.exchange_declare(
                exchange=protocol.DEAD_LETTER_FILTER_EXCHANGE,
                type="headers",
                durable=True,
                auto_delete=False,
            )
            channel.exchange_bind(
                destination=protocol.DEAD_LETTER_EXCHANGE,
                source=protocol.DEAD_LETTER_FILTER_EXCHANGE,
                routing_key="",
                arguments=deadletter.filter_binding_arguments(),
            )

    def _declare_dead_letter_queue(self, channel: Any, service: str) -> None:
        queue = protocol.dead_letter_queue(service)
        arguments = (
            {"x-queue-type": "quorum"} if self.config.queue_type == "quorum" else {}
        )
        channel.queue_declare(
            queue=queue,
            durable=True,
            auto_delete=False,
            exclusive=False,
            arguments=arguments,
        )
        channel.queue_bind(
            queue=queue,
            exchange=protocol.DEAD_LETTER_EXCHANGE,
            routing_key=protocol.service_queue(service),
        )

    def _on_delivery(self, delivery: Delivery) -> None:
        if not self._accepting:
            # Stopping: hand it straight back so another worker runs it.
            self._connection.reject(delivery, requeue=True)
            return
        with self._in_flight_lock:
            self._in_flight += 1
        loop = self._loop
        if loop is not None and self._is_async(delivery):
            asyncio.run_coroutine_threadsafe(self._handle_async(delivery), loop)
        else:
            self._pool.submit(delivery)

    def _is_async(self, delivery: Delivery) -> bool:
        subscription = self._event_consumers.get(delivery.consumer_tag)
        if subscription is not None:
            return is_coroutine_function(subscription[1].function)
        service = self._service_for(delivery)
        method = delivery.headers.get(protocol.HEADER_METHOD)
        if not isinstance(method, str):
            method = delivery.routing_key.rpartition(".")[2]
        handler = service.rpc_handlers.get(method)
        return handler is not None and is_coroutine_function(handler.function)

    async def _handle_async(self, delivery: Delivery) -> None:
        try:
            async with self._async_slots:
                subscription = self._event_consumers.get(delivery.consumer_tag)
                if subscription is not None:
                    await self._handle_event_async(*subscription, delivery)
                else:
                    await self._answer_async(delivery)
        except BrokerError as exc:
            log.warning("could not answer %s: %s", delivery.correlation_id, exc)
        except Exception:
            log.exception("unexpected failure handling %s", delivery.correlation_id)
            with contextlib.suppress(BrokerError):
                self._connection.reject(delivery, requeue=True)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
                self._in_flight_lock.notify_all()

    async def _answer_async(self, delivery: Delivery) -> None:
        """:meth:`_answer` for a coroutine handler: the same steps, awaited."""
        admitted = self._admit(delivery)
        if admitted is None:
            return
        service, request = admitted
        handler = self._check(service, request)
        if not isinstance(handler, Handler):
            self._reply_or_dead_letter(service, delivery, handler)
            return
        context = CallContext(service.name, request, asynchronous=True)
        try:
            result = await self.invoke_async(service, handler, context)
        except Exception as exc:
            self._handler_failed(service, handler, delivery, request, exc)
            return
        self._reply(delivery, result=result, idempotent=_is_idempotent(handler))

    def _handle(self, delivery: Delivery) -> None:
        try:
            subscription = self._event_consumers.get(delivery.consumer_tag)
            if subscription is not None:
                self._handle_event(*subscription, delivery)
            else:
                self._answer(delivery)
        except BrokerError as exc:
            # Reply or ack could not be sent: the broker redelivers the request.
            log.warning("could not answer %s: %s", delivery.correlation_id, exc)
        except Exception:
            log.exception("unexpected failure handling %s", delivery.correlation_id)
            # Hand it back rather than hold it unacknowledged forever: it comes back
            # flagged as redelivered, so it is counted and dead-lettered past the limit.
            with contextlib.suppress(BrokerError):
                self._connection.reject(delivery, requeue=True)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
                self._in_flight_lock.notify_all()

    def _answer(self, delivery: Delivery) -> None:
        """Run one request and publish its reply; ack only once the reply is out."""
        admitted = self._admit(delivery)
        if admitted is None:
            return
        service, request = admitted
        handler = self._check(service, request)
        if not isinstance(handler, Handler):
            self._reply_or_dead_letter(service, delivery, handler)
            return
        try:
            result = self.invoke(service, handler, CallContext(service.name, request))
        except Exception as exc:
            self._handler_failed(service, handler, delivery, request, exc)
            return
        self._reply(delivery, result=result, idempotent=_is_idempotent(handler))

    def _admit(
        self, delivery: Delivery
    ) -> tuple[ServiceDefinition, protocol.Request] | None:
        """The request to run, or None when it was dealt with already.

        Redeliveries are counted (or dead-lettered), undecodable requests answered
        (or dead-lettered when nobody waits), expired ones dropped, and sharded
        ones forwarded; each of those is acknowledged here.
        """
        service = self._service_for(delivery)
        sharded = delivery.consumer_tag in self._shard_consumers
        verdict = deadletter.verdict(
            redelivered=delivery.redelivered,
            headers=delivery.headers,
            delivery_limit=self.config.delivery_limit,
            # A shard queue is a classic one: the broker counts nothing there.
            queue_type="classic" if sharded else self.config.queue_type,
            # A quorum queue's own limit counts the returns of this copy only: the
            # copy of a cast that failed carries its earlier runs in our count.
            broker_limit=False,
        )
        if verdict.action is deadletter.Action.REQUEUE_COUNTED:
            self._requeue_counted(service, delivery, verdict.delivery_count)
            return None
        if verdict.action is deadletter.Action.DEAD_LETTER:
            log.error(POISON, service.name, verdict.delivery_count - 1)
            self._dead_letter(
                service,
                delivery,
                deadletter.REASON_DELIVERY_LIMIT,
                f"delivered {verdict.delivery_count - 1} times, never acknowledged",
            )
            return None
        try:
            request = self._decode(service, delivery, verdict.delivery_count)
        except SerializationError as exc:
            log.warning("malformed request on %s: %s", service.name, exc)
            if not delivery.reply_to:
                self._dead_letter(
                    service, delivery, deadletter.REASON_MALFORMED, str(exc)
                )
                return None
            error = MalformedRequestError("MalformedRequestError", str(exc))
            self._reply(delivery, error_payload=_without_traceback(error))
            return None
        remaining = request.remaining()
        if remaining is not None and remaining < 0:
            log.info(DROPPED_EXPIRED, service.name, request.method, -remaining)
            self._connection.ack(delivery)
            return None
        if self._forward_to_shard(service, request, delivery):
            return None
        return service, request

    def _reply_or_dead_letter(
        self, service: ServiceDefinition, delivery: Delivery, outcome: dict[str, Any]
    ) -> None:
        failure = outcome.get("error_payload")
        reason = REJECTIONS.get(failure["type"]) if failure is not None else None
        if failure is not None and reason is not None and not delivery.reply_to:
            # Nobody would hear of the failure: keep the message for an operator.
            self._dead_letter(service, delivery, reason, failure["message"])
            return
        self._reply(delivery, **outcome)

    def _handler_failed(
        self,
        service: ServiceDefinition,
        handler: Handler,
        delivery: Delivery,
        request: protocol.Request,
        exc: Exception,
    ) -> None:
        """A handler raised: reply with the error, or run a cast again.

        A caller hears of the failure, and is not answered twice. Nobody hears of a
        cast's, so it is kept as an event is: a counted copy goes to the back of the
        queue, and the run that fails on the ``delivery_limit``-th delivery
        dead-letters it instead (``handler-error``).
        """
        if delivery.reply_to:
            log.info(HANDLER_FAILED, service.name, request.method, exc)
            self._reply(
                delivery,
                error_payload=serialization.error_payload(exc),
                idempotent=_is_idempotent(handler),
            )
            return
        log.warning(HANDLER_FAILED, service.name, request.method, exc, exc_info=True)
        self._run_again_or_dead_letter(
            request,
            exc,
            dead_letter=lambda reason, detail, count: self._dead_letter(
                service,
                delivery,
                reason,
                detail,
                headers=_counted_request_headers(delivery, count),
            ),
            run_again=lambda count: self._requeue_counted(
                service, delivery, count, after_failure=True
            ),
        )

    def _run_again_or_dead_letter(
        self,
        request: protocol.Request,
        exc: Exception,
        *,
        dead_letter: Callable[[str, str, int], None],
        run_again: Callable[[int], None],
    ) -> None:
        """After a failed run of a cast or an event: once more, or past the limit
        into the dead-letter queue (``handler-error``); both get the new count."""
        verdict = deadletter.failure_verdict(
            delivery_count=request.delivery_count,
            delivery_limit=self.config.delivery_limit,
        )
        if verdict.action is deadletter.Action.DEAD_LETTER:
            detail = f"{type(exc).__name__}: {exc}"
            dead_letter(deadletter.REASON_HANDLER_ERROR, detail, verdict.delivery_count)
        else:
            run_again(verdict.delivery_count)

    def _forward_to_shard(
        self, service: ServiceDefinition, request: protocol.Request, delivery: Delivery
    ) -> bool:
        """Send a ``shard_by`` call that came through the shared queue to its owner."""
        handler = service.rpc_handlers.get(request.method)
        if handler is None or delivery.headers.get(protocol.HEADER_SHARD_KEY):
            return False
        entrypoint = handler.entrypoint
        if not isinstance(entrypoint, RpcEntrypoint) or entrypoint.shard_by is None:
            return False
        try:
            bound = handler.bind(request.args, request.kwargs)
        except TypeError:
            return False  # _answer answers with InvalidArgumentsError
        key = bound.arguments.get(entrypoint.shard_by)
        # Publish, then ack the original: a crash in between runs it twice at worst.
        self._copy_and_ack(
            delivery,
            exchange=protocol.RPC_EXCHANGE,
            routing_key=protocol.shard_routing_key(service.name, request.method),
            headers={**delivery.headers, protocol.HEADER_SHARD_KEY: str(key)},
            properties=_copied_properties(delivery),
        )
        return True

    def _handle_event(
        self, service: ServiceDefinition, handler: Handler, delivery: Delivery
    ) -> None:
        """Run an event handler, then ack: a crash before the ack redelivers it."""
        request = self._event_request(service, handler, delivery)
        if request is None:
            return
        try:
            self.invoke(service, handler, CallContext(service.name, request))
        except Exception as exc:
            self._event_failed(service, handler, delivery, request, exc)
            return
        self._connection.ack(delivery)

    async def _handle_event_async(
        self, service: ServiceDefinition, handler: Handler, delivery: Delivery
    ) -> None:
        """:meth:`_handle_event` for an ``async def`` handler."""
        request = self._event_request(service, handler, delivery)
        if request is None:
            return
        context = CallContext(service.name, request, asynchronous=True)
        try:
            await self.invoke_async(service, handler, context)
        except Exception as exc:
            self._event_failed(service, handler, delivery, request, exc)
            return
        self._connection.ack(delivery)

    def _event_request(
        self, service: ServiceDefinition, handler: Handler, delivery: Delivery
    ) -> protocol.Request | None:
        """The event as a request to ``handler``, or None when it was dealt with.

        Deliveries are counted as requests are (see :mod:`rpc.deadletter`); an event
        delivered too often, or that cannot be read, goes to the dead-letter queue.
        """
        verdict = deadletter.verdict(
            redelivered=delivery.redelivered,
            headers=delivery.headers,
            delivery_limit=self.config.delivery_limit,
            queue_type=self._event_queue_type(handler),
            # Event queues have no x-delivery-limit: the worker enforces it.
            broker_limit=False,
        )
        if verdict.action is deadletter.Action.REQUEUE_COUNTED:
            self._requeue_event(service, handler, delivery, verdict.delivery_count)
            return None
        if verdict.action is deadletter.Action.DEAD_LETTER:
            times = verdict.delivery_count - 1
            log.error(POISON_EVENT, service.name, handler.name, times)
            self._dead_letter_event(
                service,
                handler,
                delivery,
                deadletter.REASON_DELIVERY_LIMIT,
                f"delivered {times} times, never acknowledged",
                count=times,
            )
            return None
        try:
            event = events.decode_event(delivery, limit=self.config.max_message_bytes)
        except SerializationError as exc:
            # Never retried: it would fail the same way on every worker.
            self._dead_letter_event(
                service,
                handler,
                delivery,
                deadletter.REASON_MALFORMED,
                str(exc),
                count=verdict.delivery_count,
            )
            return None
        return protocol.Request(
            service=service.name,
            method=handler.name,
            args=[event.payload],
            kwargs={},
            correlation_id=delivery.correlation_id,
            reply_to=None,
            deadline=None,
            caller=event.source,
            redelivered=delivery.redelivered,
            delivery_count=verdict.delivery_count,
            event_type=event.event_type,
        )

    def _event_failed(
        self,
        service: ServiceDefinition,
        handler: Handler,
        delivery: Delivery,
        request: protocol.Request,
        exc: Exception,
    ) -> None:
        """A handler raised: run the event again, or dead-letter it past the limit."""
        log.warning(HANDLER_FAILED, service.name, handler.name, exc, exc_info=True)
        self._run_again_or_dead_letter(
            request,
            exc,
            dead_letter=lambda reason, detail, count: self._dead_letter_event(
                service, handler, delivery, reason, detail, count=count
            ),
            run_again=lambda count: self._requeue_event(
                service, handler, delivery, count, after_failure=True
            ),
        )

    def _event_queue(self, service: ServiceDefinition, handler: Handler) -> str:
        entrypoint = handler.entrypoint
        assert isinstance(entrypoint, EventHandlerEntrypoint)
        return protocol.event_queue(
            service.name,
            entrypoint.method_name,
            entrypoint.handler_type,
            self.instance_id,
        )

    def _event_queue_type(self, handler: Handler) -> str:
        entrypoint = handler.entrypoint
        assert isinstance(entrypoint, EventHandlerEntrypoint)
        return events.subscription_queue_type(
            entrypoint.handler_type, self.config.queue_type
        )

    def _requeue_event(
        self,
        service: ServiceDefinition,
        handler: Handler,
        delivery: Delivery,
        count: int,
        *,
        after_failure: bool = False,
    ) -> None:
        """Put a counted copy of an event at the back of its handler's queue.

        After a failed run the copy waits in a retry queue first (see
        :meth:`_retry_route`), except on a broadcast queue: that one belongs to this
        process and may be gone, with the copy, when the wait is over.
        """
        headers = deadletter.counted_headers(events.copy_headers(delivery), count)
        routing_key = self._event_queue(service, handler)
        properties = _copied_properties(delivery)
        entrypoint = handler.entrypoint
        assert isinstance(entrypoint, EventHandlerEntrypoint)
        if after_failure and entrypoint.handler_type != protocol.BROADCAST:
            routing_key = self._retry_route(routing_key, count, properties)
        # One lock hold, no confirm in between: as for requests (_requeue_counted).
        self._copy_and_ack(
            delivery,
            exchange="",
            routing_key=routing_key,
            headers=headers,
            properties=properties,
        )

    def _retry_route(self, origin: str, count: int, properties: dict[str, Any]) -> str:
        """The queue a copy for run ``count`` goes to: a retry queue, or ``origin``.

        The copy waits there for :func:`rpc.deadletter.retry_delay`, then RabbitMQ
        moves it back to ``origin`` by itself. ``origin`` when there is no wait
        (``retry_delay`` 0, or a transport without message TTLs).
        """
        delay = deadletter.retry_delay(
            count - 1,
            base=self.config.retry_delay,
            cap=self.config.retry_max_delay,
        )
        if delay <= 0 or not self._delays_retries:
            return origin
        delay_ms = max(1, round(delay * 1000))
        queue = protocol.retry_queue(origin, delay_ms)
        self._declare_retry_queue(queue, origin, delay_ms)
        # Persistent: a copy waiting through a broker restart is not lost.
        properties["delivery_mode"] = 2
        return queue

    def _declare_retry_queue(self, queue: str, origin: str, delay_ms: int) -> None:
        """Declare ``queue`` unless done lately on this connection."""
        now = time.monotonic()
        generation = self._connection.generation
        with self._retry_lock:
            if generation != self._retry_generation:
                self._retry_queues.clear()
                self._retry_generation = generation
            declared = self._retry_queues.get(queue)
            if declared is not None and now - declared < RETRY_QUEUE_REDECLARE:
                return
        # Declaring again renews the queue's x-expires lease: a queue that expired
        # with copies in it would take them along, and later ones would go nowhere.
        with self._connection.channel() as channel:
            channel.queue_declare(
                queue=queue,
                durable=True,
                auto_delete=False,
                exclusive=False,
                arguments=protocol.retry_queue_arguments(origin, delay_ms),
            )
        with self._retry_lock:
            if generation == self._retry_generation:
                self._retry_queues[queue] = now

    def _dead_letter_event(
        self,
        service: ServiceDefinition,
        handler: Handler,
        delivery: Delivery,
        reason: str,
        detail: str,
        *,
        count: int,
    ) -> None:
        """Move an event to the service's dead-letter queue, marked with its queue."""
        self._dead_letter(
            service,
            delivery,
            reason,
            detail,
            queue=self._event_queue(service, handler),
            headers=deadletter.counted_headers(events.copy_headers(delivery), count),
        )

    def _requeue_counted(
        self,
        service: ServiceDefinition,
        delivery: Delivery,
        count: int,
        *,
        after_failure: bool = False,
    ) -> None:
        """Put a counted copy of a request at the back of its queue.

        After a failed run the copy waits in a retry queue first (see
        :meth:`_retry_route`). A sharded request goes back through the shard
        exchange, to its key's owner, at once: a retry queue sends to one queue.
        """
        headers = _counted_request_headers(delivery, count)
        exchange, routing_key = "", protocol.service_queue(service.name)
        properties = _copied_properties(delivery)
        shard_key = headers.get(protocol.HEADER_SHARD_KEY)
        if isinstance(shard_key, str) and shard_key:
            exchange = protocol.RPC_EXCHANGE
            routing_key = protocol.shard_routing_key(
                service.name, headers[protocol.HEADER_METHOD]
            )
        elif after_failure:
            routing_key = self._retry_route(routing_key, count, properties)
        deadline = headers.get(protocol.HEADER_DEADLINE)
        if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
            properties["expiration"] = protocol.expiration_ms(float(deadline))
        # Copy and ack in one lock hold on one channel: the ack leaves right behind
        # the copy, before the copy can reach a handler. Waiting for a publisher
        # confirm in between would let a handler that kills its process run the
        # copy first, and the original would come back and be copied again.
        self._copy_and_ack(
            delivery,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            properties=properties,
        )

    def _dead_letter(
        self,
        service: ServiceDefinition,
        delivery: Delivery,
        reason: str,
        detail: str,
        *,
        queue: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Move a message to the service's dead-letter queue, then ack it.

        ``queue`` is the one it came from (default: the service queue), where a
        requeue sends it back; ``headers`` replace the delivery's own.
        """
        log.warning(DEAD_LETTERED, service.name, reason, detail)
        headers = deadletter.dead_letter_headers(
            delivery.headers if headers is None else headers,
            reason,
            detail,
            queue=queue or protocol.service_queue(service.name),
        )
        properties = _copied_properties(delivery)
        properties.pop("expiration", None)  # kept until an operator looks at it
        properties["delivery_mode"] = 2
        self._copy_and_ack(
            delivery,
            exchange=protocol.DEAD_LETTER_EXCHANGE,
            routing_key=protocol.service_queue(service.name),
            headers=headers,
            properties=properties,
            # One that came without a content type is not claimed to be JSON.
            content_type="application/octet-stream",
        )

    def _copy_and_ack(
        self,
        delivery: Delivery,
        *,
        exchange: str,
        routing_key: str,
        headers: Mapping[str, Any],
        properties: dict[str, Any],
        content_type: str = serialization.CONTENT_TYPE,
    ) -> None:
        """Publish ``delivery``'s body elsewhere, then ack it, in one lock hold.

        The copy keeps the original's content type (``content_type`` when it had
        none) and encoding; a crash between the two runs the message twice at worst,
        never loses it.
        """
        self._connection.publish_and_ack(
            delivery,
            delivery.body,
            exchange=exchange,
            routing_key=routing_key,
            content_type=delivery.content_type or content_type,
            content_encoding=_content_encoding(delivery),
            headers=headers,
            properties=properties,
        )

    def _service_for(self, delivery: Delivery) -> ServiceDefinition:
        name, _, _ = delivery.routing_key.partition(".")
        service = self.services.get(name)
        if service is None:
            # Published straight onto the queue: the consumer says which service.
            name = self._consumers.get(delivery.consumer_tag, "")
            service = self.services.get(name) or next(iter(self.services.values()))
        return service

    def _decode(
        self, service: ServiceDefinition, delivery: Delivery, delivery_count: int
    ) -> protocol.Request:
        if len(delivery.body) > self.config.max_message_bytes:
            raise SerializationError(
                f"request of {len(delivery.body)} bytes is over the limit of "
                f"{self.config.max_message_bytes}"
            )
        args, kwargs = protocol.parse_request_body(
            serialization.decode(delivery.body, delivery.content_type)
        )
        headers = delivery.headers
        method = headers.get(protocol.HEADER_METHOD)
        if not isinstance(method, str):
            method = delivery.routing_key.rpartition(".")[2]
        deadline = headers.get(protocol.HEADER_DEADLINE)
        return protocol.Request(
            service=service.name,
            method=method,
            args=args,
            kwargs=kwargs,
            correlation_id=delivery.correlation_id,
            reply_to=delivery.reply_to,
            deadline=float(deadline) if isinstance(deadline, (int, float)) else None,
            caller=str(headers.get(protocol.HEADER_CALLER, "")),
            redelivered=delivery.redelivered,
            delivery_count=delivery_count,
        )

    def _check(
        self, service: ServiceDefinition, request: protocol.Request
    ) -> Handler | dict[str, Any]:
        """The handler for ``request``, or the error reply when there is none."""
        handler = service.rpc_handlers.get(request.method)
        if handler is None:
            error = MethodNotFoundError(
                "MethodNotFoundError",
                f"service {service.name!r} has no method {request.method!r}",
            )
            return {"error_payload": _without_traceback(error)}
        try:
            handler.bind(request.args, request.kwargs)
        except TypeError as exc:
            invalid = InvalidArgumentsError(
                "InvalidArgumentsError", f"{service.name}.{request.method}(): {exc}"
            )
            return {"error_payload": _without_traceback(invalid)}
        return handler

    def invoke(
        self, service: ServiceDefinition, handler: Handler, context: CallContext
    ) -> JsonValue:
        """Make a fresh service instance with its dependencies and call the handler."""
        instance = service.cls()
        for attr, dependency in service.dependencies.items():
            setattr(instance, attr, dependency.get_dependency(self, context))
        request = context.request
        with serving(context):
            try:
                result = handler.function(instance, *request.args, **request.kwargs)
            except Exception as exc:
                self._notify(context, handler, None, exc)
                raise
        self._notify(context, handler, result, None)
        return result

    def observe(self, observer: HandlerObserver) -> Callable[[], None]:
        """Call ``observer`` after every handler run; returns what removes it.

        For test tools (``rpc.testing.entrypoint_waiter``): it runs on the handler's
        thread, and an exception it raises is logged, never given to the caller.
        """
        with self._cluster_lock:
            self._observers = (*self._observers, observer)

        def remove() -> None:
            with self._cluster_lock:
                self._observers = tuple(o for o in self._observers if o is not observer)

        return remove

    def _notify(
        self,
        context: CallContext,
        handler: Handler,
        result: JsonValue,
        error: Exception | None,
    ) -> None:
        for observer in self._observers:
            try:
                observer(context, handler, result, error)
            except Exception:
                log.exception("handler observer failed")

    async def invoke_async(
        self, service: ServiceDefinition, handler: Handler, context: CallContext
    ) -> JsonValue:
        """:meth:`invoke` for an ``async def`` handler, awaited on the runner's loop.

        Each call runs in its own task, so the context (and its deadline) set here
        is seen by this call's nested calls only.
        """
        instance = service.cls()
        for attr, dependency in service.dependencies.items():
            setattr(instance, attr, dependency.get_dependency(self, context))
        request = context.request
        with serving(context):
            try:
                result = await handler.function(
                    instance, *request.args, **request.kwargs
                )
            except Exception as exc:
                self._notify(context, handler, None, exc)
                raise
        self._notify(context, handler, result, None)
        return result

    def _reply(
        self,
        delivery: Delivery,
        *,
        result: JsonValue = None,
        error_payload: dict[str, str] | None = None,
        idempotent: bool = False,
    ) -> None:
        if not delivery.reply_to:
            self._connection.ack(delivery)
            return
        limit = self.config.max_message_bytes
        try:
            body = serialization.encode(
                protocol.error_body(error_payload)
                if error_payload is not None
                else protocol.result_body(result),
                limit=limit,
            )
        except SerializationError as exc:
            body = serialization.encode(
                protocol.error_body(
                    serialization.error_payload(exc, with_traceback=False)
                )
            )
        # Replies to direct reply-to must not be mandatory: RabbitMQ would return them
        # as unroutable even though they are delivered.
        self._connection.publish_and_ack(
            delivery,
            body,
            exchange="",
            routing_key=delivery.reply_to,
            content_type=serialization.CONTENT_TYPE,
            # Tells the caller it may retry this method after a connection loss.
            headers=protocol.reply_headers(idempotent=idempotent),
            properties={"correlation_id": delivery.correlation_id, "delivery_mode": 1},
        )


def _is_idempotent(handler: Handler) -> bool:
    entrypoint = handler.entrypoint
    return isinstance(entrypoint, RpcEntrypoint) and entrypoint.idempotent


def _is_sharded(service: ServiceDefinition) -> bool:
    return any(
        isinstance(handler.entrypoint, RpcEntrypoint)
        and handler.entrypoint.shard_by is not None
        for handler in service.rpc_handlers.values()
    )


def _copied_properties(delivery: Delivery) -> dict[str, Any]:
    # Not user_id: RabbitMQ refuses a user_id other than the publisher's own. Not
    # priority: priority queues are not used, and Kombu takes it apart from the rest.
    return {
        name: delivery.properties[name]
        for name in COPIED_PROPERTIES
        if delivery.properties.get(name) is not None
    }


def _counted_request_headers(delivery: Delivery, count: int) -> dict[str, Any]:
    """A request's headers with its count, for a copy sent on another routing key."""
    headers = deadletter.counted_headers(delivery.headers, count)
    if not isinstance(headers.get(protocol.HEADER_METHOD), str):
        # Its routing key will not be the original's: keep the method it carried.
        headers[protocol.HEADER_METHOD] = delivery.routing_key.rpartition(".")[2]
    return headers


def _content_encoding(delivery: Delivery) -> str:
    return str(delivery.properties.get("content_encoding") or "utf-8")


def _without_traceback(error: Exception) -> dict[str, str]:
    payload = serialization.error_payload(error, with_traceback=False)
    payload["type"] = type(error).__name__
    payload["message"] = getattr(error, "message", str(error))
    return payload


def _cancel_all_and_stop(loop: asyncio.AbstractEventLoop) -> None:
    # Handlers still running at this point were given up on (kill, or a stop that
    # timed out): their requests were not acked, so the broker hands them out again.
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.stop()
