"""One consumer per entrypoint kind: each declares its own queue and handles its
own deliveries. The registry maps entrypoint types to consumer classes.

A new entrypoint kind is a new :class:`Consumer` subclass registered with
:func:`register_consumer` for its entrypoint type: no existing consumer changes.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from rpc import deadletter, events, protocol, serialization
from rpc.config import Config
from rpc.entrypoints import (
    Entrypoint,
    EventHandlerEntrypoint,
    RpcEntrypoint,
    is_coroutine_function,
)
from rpc.errors import BrokerError, SerializationError
from rpc.observability.observers import QUIET, WorkerObserver, measured
from rpc.protocol import Request
from rpc.serialization import JsonValue
from rpc.service import Handler, ServiceDefinition
from rpc.transport import BrokerConnection, Delivery
from rpc.worker.admission import RequestAdmission, method_of, rpc_entrypoint
from rpc.worker.dispatch import Dispatcher, Work
from rpc.worker.failures import FailurePolicy, call_fields
from rpc.worker.invoke import Invoker
from rpc.worker.replies import ReplyPublisher

log = logging.getLogger(__name__)

HANDLER_FAILED = "%s.%s failed: %s"


@dataclasses.dataclass(eq=False)
class Worker:
    """The parts of a running worker that its consumers share."""

    connection: BrokerConnection
    config: Config
    #: The runner's services by name; test tools may replace a definition.
    services: Mapping[str, ServiceDefinition]
    #: Names this process's own queues (broadcast events, sharded calls).
    instance_id: str
    #: Says who answered a discovery request.
    worker_id: str
    dispatcher: Dispatcher
    invoker: Invoker
    admission: RequestAdmission
    failures: FailurePolicy
    replies: ReplyPublisher
    #: False once the runner stops: what arrives then goes back to the queue.
    accepting: bool = False
    #: Deliveries that arrived after the stop began, handed back.
    handed_back: int = 0
    #: Hears of what no middleware sees (see rpc.observability.observers).
    observer: WorkerObserver = QUIET
    #: What a discovery answer says of this worker besides its services.
    live: Callable[[], dict[str, Any]] | None = None
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def hand_back(self, delivery: Delivery) -> None:
        """Return a delivery that arrived after this worker began to stop.

        The broker sends what it had in flight before it saw the cancel. Rejected
        with requeue while the channel is open; once it is closing, left
        unacknowledged, which the broker requeues when the channel closes.
        """
        with self._lock:
            self.handed_back += 1
        if self.connection.connected:
            # Closed meanwhile: requeued with the channel all the same.
            with contextlib.suppress(BrokerError):
                self.connection.reject(delivery, requeue=True)


class Consumer(abc.ABC):
    """Consumes one queue for one service, and knows what its deliveries are."""

    #: Names the consumer in its consumer tag (empty: the service queue).
    part: str = ""
    #: Deliveries need no acknowledgement (and take no prefetch slot).
    no_ack: ClassVar[bool] = False
    #: Deliveries this consumer keeps unacknowledged for as long as it runs: the
    #: channel's prefetch grows by as many, so handlers keep all their slots.
    holds: int = 0

    def __init__(self, worker: Worker, service: str) -> None:
        self.worker = worker
        self.service = service
        self.tag: str | None = None

    @classmethod
    def for_handlers(
        cls, worker: Worker, service: ServiceDefinition, handlers: Sequence[Handler]
    ) -> list[Consumer]:
        """The consumers a service with these handlers of this kind needs.

        Called for every registered kind, with no handlers when the service has
        none of it: one consumer per handler by default.
        """
        return [cls(worker, service.name, handler) for handler in handlers]  # type: ignore[call-arg]

    @abc.abstractmethod
    def declare(self, channel: Any) -> str:
        """Declare (and bind) this consumer's queue on connect; return its name."""

    @abc.abstractmethod
    def on_delivery(self, delivery: Delivery) -> None:
        """Handle one delivery, on the thread that read it: keep it short."""

    def start(self, channel: Any) -> None:
        """Declare the queue and consume it; inside the connection's ``on_connect``."""
        queue = self.declare(channel)
        callback: Callable[[Delivery], None] = self.on_delivery
        observer = self.worker.observer
        if observer.measures_sizes and isinstance(self, HandlerConsumer):
            # Bound here, so a worker that measures nothing pays nothing per delivery.
            callback = measured(callback, observer, self.service)
        self.tag = self.worker.connection.consume(
            channel,
            queue,
            callback,
            no_ack=self.no_ack,
            consumer_tag=protocol.consumer_tag(
                self.service, self.part, self.worker.instance_id
            ),
        )

    def stop(self) -> None:
        """Stop consuming; deliveries already on their way still arrive."""
        if self.tag is not None:
            self.worker.connection.cancel(self.tag)

    def close(self) -> None:
        """The connection this consumer was started on is gone (or closing)."""
        return None


class HandlerConsumer(Consumer):
    """A consumer whose deliveries run handlers: admitted, dispatched, settled."""

    def on_delivery(self, delivery: Delivery) -> None:
        worker = self.worker
        if not worker.accepting:
            worker.hand_back(delivery)
            return
        service = worker.services[self.service]
        handler = self.handler_for(service, delivery)
        dispatcher = worker.dispatcher
        dispatcher.submit(
            Work(self, delivery, service, handler),
            asynchronous=dispatcher.has_async
            and handler is not None
            and is_coroutine_function(handler.function),
        )

    @abc.abstractmethod
    def handler_for(
        self, service: ServiceDefinition, delivery: Delivery
    ) -> Handler | None:
        """The handler a delivery runs; None if the service has none for it."""

    @abc.abstractmethod
    def admit(self, work: Work) -> Request | None:
        """The request to run, or None when the delivery was settled already."""

    @abc.abstractmethod
    def kind(self, request: Request) -> str:
        """The run's kind, as middlewares see it."""

    @abc.abstractmethod
    def succeeded(self, work: Work, result: JsonValue) -> None:
        """Settle the delivery of a handler that returned."""

    @abc.abstractmethod
    def failed(self, work: Work, request: Request, exc: Exception) -> None:
        """Settle the delivery of a handler that raised."""


_C = TypeVar("_C", bound=type[Consumer])

#: Entrypoint type -> the consumer class its handlers need.
CONSUMERS: dict[type[Entrypoint], type[Consumer]] = {}


def register_consumer(entrypoint: type[Entrypoint]) -> Callable[[_C], _C]:
    """Class decorator: ``consumer`` serves the handlers of ``entrypoint``."""

    def register(consumer: _C) -> _C:
        CONSUMERS[entrypoint] = consumer
        return consumer

    return register


def consumers_for(worker: Worker, service: ServiceDefinition) -> list[Consumer]:
    """Every consumer ``service`` needs, in registry order."""
    handlers = (*service.rpc_handlers.values(), *service.other_handlers)
    consumers: list[Consumer] = []
    for entrypoint, consumer in CONSUMERS.items():
        mine = [h for h in handlers if type(h.entrypoint) is entrypoint]
        consumers.extend(consumer.for_handlers(worker, service, mine))
    return consumers


@register_consumer(RpcEntrypoint)
class RpcQueueConsumer(HandlerConsumer):
    """The service queue every worker of a service shares: calls and casts.

    Every service has one, with or without ``@rpc`` methods, so a call to a method
    it lacks gets ``MethodNotFoundError`` rather than no answer.
    """

    what = "a request"
    counts_dead_letters = False
    #: The type the broker counts this queue's deliveries as (see rpc.deadletter).
    queue_type: str

    def __init__(self, worker: Worker, service: str) -> None:
        super().__init__(worker, service)
        self.queue = protocol.service_queue(service)
        self.label = service
        self.queue_type = worker.config.queue_type

    @classmethod
    def for_handlers(
        cls, worker: Worker, service: ServiceDefinition, handlers: Sequence[Handler]
    ) -> list[Consumer]:
        consumers: list[Consumer] = [cls(worker, service.name)]
        if any(rpc_entrypoint(handler).shard_by is not None for handler in handlers):
            consumers.append(ShardQueueConsumer(worker, service.name))
        consumers.extend(PartitionQueueConsumer.served(worker, service.name))
        return consumers

    def declare(self, channel: Any) -> str:
        return self._declare_service_queue(
            channel, protocol.service_binding(self.service)
        )

    def _declare_service_queue(self, channel: Any, binding: str) -> str:
        config = self.worker.config
        arguments = deadletter.queue_arguments(
            self.service,
            queue_type=config.queue_type,
            delivery_limit=config.delivery_limit,
        )
        if config.queue_type == "quorum":
            arguments.update(config.quorum_placement())
        channel.queue_declare(
            queue=self.queue,
            durable=True,
            auto_delete=False,
            exclusive=False,
            arguments=arguments,
        )
        channel.queue_bind(
            queue=self.queue, exchange=protocol.RPC_EXCHANGE, routing_key=binding
        )
        return self.queue

    def handler_for(
        self, service: ServiceDefinition, delivery: Delivery
    ) -> Handler | None:
        return service.rpc_handlers.get(method_of(delivery))

    def admit(self, work: Work) -> Request | None:
        delivery = work.delivery
        handler = work.handler
        return self.worker.admission.admit(
            self,
            delivery,
            work.service,
            handler,
            handler.name if handler is not None else method_of(delivery),
            queue_type=self.queue_type,
        )

    def kind(self, request: Request) -> str:
        return "call" if request.reply_to else "cast"

    def succeeded(self, work: Work, result: JsonValue) -> None:
        self.worker.replies.reply(
            work.delivery,
            result=result,
            idempotent=self._idempotent(work),
            service=self.service,
        )

    def failed(self, work: Work, request: Request, exc: Exception) -> None:
        """A caller hears of the failure, and is not answered twice. Nobody hears
        of a cast's: it is run again, as an event is, or dead-lettered."""
        delivery = work.delivery
        if delivery.reply_to:
            # Logged once, here, with its traceback: the caller gets it as text.
            log.warning(
                HANDLER_FAILED,
                request.service,
                request.method,
                exc,
                exc_info=exc,
                extra=call_fields(request, delivery),
            )
            self.worker.replies.reply(
                delivery,
                error_payload=serialization.error_payload(exc),
                idempotent=self._idempotent(work),
                service=self.service,
            )
            return
        self.worker.failures.handler_failed(self, delivery, request, exc)

    @staticmethod
    def _idempotent(work: Work) -> bool:
        return work.handler is not None and rpc_entrypoint(work.handler).idempotent

    # -- what the failure policy asks (rpc.worker.failures.Origin) -----------------

    def copy_headers(self, delivery: Delivery, count: int) -> dict[str, Any]:
        headers = deadletter.counted_headers(delivery.headers, count)
        if not isinstance(headers.get(protocol.HEADER_METHOD), str):
            # Its routing key will not be the original's: keep the method it carried.
            headers[protocol.HEADER_METHOD] = delivery.routing_key.rpartition(".")[2]
        return headers

    def requeue_route(self, headers: Mapping[str, Any]) -> tuple[str, str, bool]:
        # A sharded request goes back through the shard exchange, to its key's
        # owner, at once: a retry queue sends to one queue.
        shard_key = headers.get(protocol.HEADER_SHARD_KEY)
        if isinstance(shard_key, str) and shard_key:
            return (
                protocol.RPC_EXCHANGE,
                protocol.shard_routing_key(
                    self.service, headers[protocol.HEADER_METHOD]
                ),
                False,
            )
        return "", self.queue, True


class ShardQueueConsumer(RpcQueueConsumer):
    """This process's own queue on the service's consistent-hash exchange.

    Sharded calls go rpc --<service>.<method>.shard--> the service's consistent-hash
    exchange, which hashes the shard key header onto the queues of the live workers
    (RabbitMQ's consistent-hash exchange plugin).
    """

    part = "shard"

    def __init__(self, worker: Worker, service: str) -> None:
        super().__init__(worker, service)
        # Exclusive, so classic whatever queue_type says: the broker counts nothing.
        self.queue_type = "classic"

    def declare(self, channel: Any) -> str:
        exchange = protocol.shard_exchange(self.service)
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
            routing_key=protocol.shard_binding(self.service),
        )
        queue = protocol.shard_queue(self.service, self.worker.instance_id)
        channel.queue_declare(
            queue=queue, durable=False, exclusive=True, auto_delete=True
        )
        channel.queue_bind(
            queue=queue, exchange=exchange, routing_key=str(protocol.SHARD_WEIGHT)
        )
        return queue


class PartitionQueueConsumer(RpcQueueConsumer):
    """One of the queues a partitioned service is spread over (``Config.partitions``).

    Declared as the service queue is, so each is a quorum queue of its own whose
    leader RabbitMQ places apart from the others' (``quorum_leader_locator``).
    Callers that know the service is partitioned publish to one of them; the
    service queue stays, for the callers that do not.
    """

    def __init__(
        self, worker: Worker, service: str, index: int, *, consumes: bool = True
    ) -> None:
        super().__init__(worker, service)
        self.index = index
        self.queue = protocol.partition_queue(service, index)
        self.part = f"partition-{index}"
        self.label = f"{service} partition {index}"
        self.consumes = consumes

    @classmethod
    def served(cls, worker: Worker, service: str) -> list[Consumer]:
        """Every partition of ``service``; this worker consumes all, or its subset.

        The others are declared all the same, so that what a caller sends to a
        partition waits there for its workers rather than come back unroutable.
        """
        count = worker.config.partitions.get(service, 0)
        wanted = set(worker.config.serve_partitions or range(count))
        return [
            cls(worker, service, index, consumes=index in wanted)
            for index in range(count)
        ]

    def start(self, channel: Any) -> None:
        if self.consumes:
            super().start(channel)
        else:
            self.declare(channel)

    def declare(self, channel: Any) -> str:
        return self._declare_service_queue(
            channel, protocol.partition_binding(self.service, self.index)
        )


@register_consumer(EventHandlerEntrypoint)
class EventConsumer(HandlerConsumer):
    """The queue of one ``@event_handler``: its handler type says who shares it."""

    what = "an event"
    counts_dead_letters = True

    def __init__(self, worker: Worker, service: str, handler: Handler) -> None:
        super().__init__(worker, service)
        entrypoint = handler.entrypoint
        assert isinstance(entrypoint, EventHandlerEntrypoint)
        self.entrypoint = entrypoint
        self.handler = handler
        self.part = handler.name
        self.label = f"{service}.{handler.name}"
        self.queue = protocol.event_queue(
            service, entrypoint.method_name, entrypoint.handler_type, worker.instance_id
        )
        self.queue_type = events.subscription_queue_type(
            entrypoint.handler_type, worker.config.queue_type
        )

    def declare(self, channel: Any) -> str:
        events.declare_exchange(channel)
        return events.declare_subscription(
            channel,
            self.service,
            self.entrypoint,
            instance=self.worker.instance_id,
            arguments=protocol.typed_queue_arguments(
                self.worker.config.queue_type, self.worker.config.quorum_placement()
            ),
        )

    def handler_for(
        self, service: ServiceDefinition, delivery: Delivery
    ) -> Handler | None:
        return self.handler

    def admit(self, work: Work) -> Request | None:
        """The event as a request to the handler, or None when it was settled.

        Deliveries are counted as requests are (see :mod:`rpc.deadletter`); an event
        delivered too often, or that cannot be read, goes to the dead-letter queue.
        """
        delivery = work.delivery
        failures = self.worker.failures
        count = failures.count(self, delivery, queue_type=self.queue_type)
        if count is None:
            return None
        try:
            event = events.decode_event(
                delivery, limit=self.worker.config.max_message_bytes
            )
        except SerializationError as exc:
            # Never retried: it would fail the same way on every worker.
            failures.dead_letter(
                self, delivery, deadletter.REASON_MALFORMED, str(exc), count=count
            )
            return None
        return Request(
            service=self.service,
            method=self.handler.name,
            args=[event.payload],
            kwargs={},
            correlation_id=delivery.correlation_id,
            reply_to=None,
            deadline=None,
            caller=event.source,
            redelivered=delivery.redelivered,
            delivery_count=count,
            event_type=event.event_type,
        )

    def kind(self, request: Request) -> str:
        return "event"

    def succeeded(self, work: Work, result: JsonValue) -> None:
        # Ack only once the handler ran: a crash before redelivers the event.
        self.worker.connection.ack(work.delivery)

    def failed(self, work: Work, request: Request, exc: Exception) -> None:
        self.worker.failures.handler_failed(self, work.delivery, request, exc)

    # -- what the failure policy asks (rpc.worker.failures.Origin) -----------------

    def copy_headers(self, delivery: Delivery, count: int) -> dict[str, Any]:
        return deadletter.counted_headers(events.copy_headers(delivery), count)

    def requeue_route(self, headers: Mapping[str, Any]) -> tuple[str, str, bool]:
        # Not through a retry queue on a broadcast queue: that one belongs to this
        # process and may be gone, with the copy, when the wait is over.
        return "", self.queue, self.entrypoint.handler_type != protocol.BROADCAST


class DiscoveryResponder(Consumer):
    """A private queue on the discovery fanout: every worker answers every request."""

    no_ack = True  # discovery requests are cheap to lose and must not take prefetch
    part = "discovery"

    def declare(self, channel: Any) -> str:
        channel.exchange_declare(
            exchange=protocol.DISCOVERY_EXCHANGE,
            type="fanout",
            durable=True,
            auto_delete=False,
        )
        declared = channel.queue_declare(
            queue="", exclusive=True, auto_delete=True, durable=False
        )
        queue: str = declared.queue if hasattr(declared, "queue") else declared[0]
        channel.queue_bind(queue=queue, exchange=protocol.DISCOVERY_EXCHANGE)
        return queue

    def on_delivery(self, delivery: Delivery) -> None:
        """Describe this worker's services to whoever asked (on the reading thread)."""
        worker = self.worker
        if not delivery.reply_to or not worker.accepting:
            return
        reply = protocol.discovery_reply(
            worker.worker_id,
            [definition.describe() for definition in worker.services.values()],
        )
        if worker.live is not None:
            reply["live"] = worker.live()
        body = serialization.encode(reply)
        try:
            worker.connection.publish(
                body,
                exchange="",
                routing_key=delivery.reply_to,
                content_type=serialization.CONTENT_TYPE,
                correlation_id=delivery.correlation_id,
                delivery_mode=1,
            )
        except (BrokerError, SerializationError) as exc:
            # The connection went down meanwhile, or the asker's reply_to cannot
            # be written back: the asker hears from the others, or from nobody.
            log.debug("discovery reply not sent: %s", exc)
