"""Kombu's in-memory transport, completed with the RabbitMQ behaviour services rely on.

``memory://`` runs services and their callers in one process, for tests. Kombu's
transport knows direct, topic and fanout exchanges. This one adds what RabbitMQ
gives the framework beyond those, with the same observable effects:

- exchange-to-exchange bindings (the ``rpc`` exchange feeds each sharded service's
  exchange);
- the consistent-hash exchange type of sharded services: a key always reaches the
  same bound queue while the bindings stay as they are, and only about 1/N of the keys
  move when a queue joins;
- exclusive queues that go with their connection, and exclusive auto-delete queues
  that go with their consumer, so a stopped worker leaves the ring;
- deleting a queue unbinds it (Kombu would keep routing to it and recreate it);
- a rejected message goes back to the queue it came from, not to every queue its
  routing key matches now.

Per-message expiration is not emulated: a request stays queued past its deadline
until a worker takes it, and the worker drops it unrun (``x-rpc-deadline``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from kombu.transport import memory as kombu_memory
from kombu.transport.virtual import exchange as kombu_exchange

#: The RabbitMQ plugin's exchange type, emulated here.
CONSISTENT_HASH = "x-consistent-hash"
#: Exchange argument naming the header to hash instead of the routing key.
HASH_HEADER = "hash-header"
#: Where a stored message notes which queue holds it, to be requeued there.
_QUEUE_NOTE = "queue"


def jump_hash(key: int, buckets: int) -> int:
    """The bucket, in ``range(buckets)``, of a 64-bit ``key``.

    Lamping and Veach's jump consistent hash, which the RabbitMQ plugin also uses:
    going from N to N + 1 buckets moves only keys into the new bucket, about 1/(N + 1)
    of them, and none between the others.
    """
    if buckets <= 0:
        raise ValueError("a ring needs at least one bucket")
    bucket, candidate = -1, 0
    while candidate < buckets:
        bucket = candidate
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def key_hash(key: str) -> int:
    """A 64-bit hash of a shard key, the same in every process and every run."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class ConsistentHashExchange(kombu_exchange.ExchangeType):
    """Routes each message to one bound queue, chosen by a hash of its key.

    :meth:`Channel.routes` asks :meth:`choose`, which sees the message's headers;
    Kombu's own routing only passes routing keys.

    As RabbitMQ's plugin: the binding key is the queue's weight (its number of
    buckets), buckets are numbered in binding order, and the key is the header named
    by the exchange's ``hash-header`` argument, else the routing key.
    """

    def lookup(
        self, table: Iterable[Any], exchange: str, routing_key: str, default: Any
    ) -> set[str]:
        # Without the message there is no key: every queue the hash could choose.
        return {queue for _, _, queue in table}

    def choose(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any]
    ) -> set[str]:
        """The one queue this message goes to, or none when nothing is bound."""
        declared = self.channel.state.exchanges[exchange]
        ring = [
            queue
            for weight, _, queue in declared["table"]
            for _ in range(_weight(weight))
        ]
        if not ring:
            return set()
        header = (declared.get("arguments") or {}).get(HASH_HEADER)
        key = routing_key if header is None else str(headers.get(header, ""))
        return {ring[jump_hash(key_hash(key), len(ring))]}


def _weight(binding_key: str) -> int:
    try:
        return max(int(binding_key), 0)
    except ValueError:
        return 0


_EXCHANGE_TYPES: dict[str, type[kombu_exchange.ExchangeType]] = {
    **kombu_memory.Channel.exchange_types,
    CONSISTENT_HASH: ConsistentHashExchange,
}


class Channel(kombu_memory.Channel):
    """A memory channel that routes as RabbitMQ does where the framework looks."""

    exchange_types = _EXCHANGE_TYPES

    # -- routing ---------------------------------------------------------------------

    def routes(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any]
    ) -> set[str]:
        """The queues a message would reach, following exchange-to-exchange bindings.

        Empty when RabbitMQ would find the message unroutable (and return it, when
        mandatory).
        """
        if not exchange:
            return {routing_key} if self._has_queue(routing_key) else set()
        return self._routes(exchange, routing_key, headers, {exchange})

    def _routes(
        self,
        exchange: str,
        routing_key: str,
        headers: Mapping[str, Any],
        seen: set[str],
    ) -> set[str]:
        declared = self.state.exchanges.get(exchange)
        if declared is None:
            return set()
        kind = self.typeof(exchange)
        if isinstance(kind, ConsistentHashExchange):
            queues = kind.choose(exchange, routing_key, headers)
        else:
            queues = set(kind.lookup(declared["table"], exchange, routing_key, None))
        bound = declared.get("exchange_bindings", [])
        for destination in kind.lookup(bound, exchange, routing_key, None):
            if destination not in seen:  # RabbitMQ routes a message once per queue
                seen.add(destination)
                queues |= self._routes(destination, routing_key, headers, seen)
        return queues

    def basic_publish(
        self, message: Any, exchange: str, routing_key: str, **kwargs: Any
    ) -> None:
        # What no queue takes is dropped, as on RabbitMQ (Kombu would create the
        # queue named by the routing key, or park the message in a dead-letter one).
        self._inplace_augment_message(message, exchange, routing_key)
        for queue in self.routes(exchange, routing_key, message.get("headers") or {}):
            self._put(queue, message, **kwargs)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        # A copy per queue, noting the queue: one publish may reach several queues,
        # and a requeue must go back to the one it came from.
        properties = message["properties"]
        info = {**properties.get("delivery_info", {}), _QUEUE_NOTE: queue}
        copy = {**message, "properties": {**properties, "delivery_info": info}}
        super()._put(queue, copy, **kwargs)

    def _restore(self, message: Any) -> None:
        queue = message.delivery_info.get(_QUEUE_NOTE)
        if queue is None or not self._has_queue(queue):
            return  # its queue was deleted meanwhile: so is the message, on RabbitMQ
        raw = message.serializable()
        info = {**message.delivery_info, "redelivered": True}
        raw["properties"] = {**raw["properties"], "delivery_info": info}
        super()._put(queue, raw)

    def exchange_bind(
        self,
        destination: str,
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        """Bind exchange ``destination`` to ``source``: what it takes, it passes on."""
        bound = self.state.exchanges[source].setdefault("exchange_bindings", [])
        binding = self.typeof(source).prepare_bind(
            destination, source, routing_key, arguments
        )
        if binding not in bound:
            bound.append(binding)

    def exchange_unbind(
        self,
        destination: str,
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        declared = self.state.exchanges.get(source)
        if declared is None:
            return
        binding = self.typeof(source).prepare_bind(
            destination, source, routing_key, arguments
        )
        bound = declared.get("exchange_bindings", [])
        bound[:] = [each for each in bound if each != binding]

    # -- queue lifetimes -------------------------------------------------------------

    def queue_declare(
        self, queue: Any = None, passive: bool = False, **kwargs: Any
    ) -> Any:
        declared = super().queue_declare(queue, passive, **kwargs)
        if kwargs.get("exclusive") and not passive:
            owner: Transport = self.connection
            owner.exclusive_queues.add(declared.queue)
            if kwargs.get("auto_delete"):
                owner.auto_delete_queues.add(declared.queue)
        return declared

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> Any:
        if if_empty and self._size(queue):
            return None
        delete_queue(queue)
        return None

    def basic_cancel(self, consumer_tag: str) -> None:
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        owner: Transport | None = self.connection
        if (
            queue is not None
            and owner is not None
            and queue in owner.auto_delete_queues
            and queue not in self._tag_to_queue.values()
        ):
            # Exclusive and auto-delete: its only consumer is gone, so is the queue.
            owner.forget(queue)
            delete_queue(queue)


class Transport(kombu_memory.Transport):
    """Kombu's memory transport with :class:`Channel`; its state is process-wide."""

    Channel = Channel
    #: Kombu then keeps the URL as it is: ``memory://``, also in logs.
    can_parse_url = True

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        #: Queues declared exclusive on this connection: deleted when it closes.
        self.exclusive_queues: set[str] = set()
        self.auto_delete_queues: set[str] = set()

    def forget(self, queue: str) -> None:
        self.exclusive_queues.discard(queue)
        self.auto_delete_queues.discard(queue)

    def close_connection(self, connection: Any) -> None:
        for queue in list(self.exclusive_queues):
            self.forget(queue)
            delete_queue(queue)
        super().close_connection(connection)


def delete_queue(queue: str) -> None:
    """Delete ``queue``, its messages and its bindings, as RabbitMQ does."""
    state = Transport.global_state
    exchanges: dict[str, Any] = state.exchanges or {}
    for binding in list(state.queue_index.get(queue, ())):
        declared = exchanges.get(binding.exchange)
        if declared is not None:
            table = declared.get("table", [])
            table[:] = [meta for meta in table if meta[2] != queue]
    state.queue_bindings_delete(queue)
    kombu_memory.Channel.queues.pop(queue, None)


def transport_for(url: str) -> type[Transport] | None:
    """The transport class to use for ``url``: ours for ``memory://``, else Kombu's."""
    return Transport if url.partition("://")[0] == "memory" else None
