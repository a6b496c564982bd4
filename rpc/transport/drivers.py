"""What differs between RabbitMQ and Kombu's in-process transports, behind one protocol.

A :class:`Driver` is chosen once per connection, from the Kombu transport the URL
names: :class:`AmqpDriver` for py-amqp (a socket, packed frames, one write for a
reply and its ack), :class:`MemoryDriver` for Kombu's virtual transports (no socket:
polled, woken by a bell, with RabbitMQ's routing and returns imitated).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from kombu.connection import Connection as KombuConnection
from kombu.transport import memory as kombu_memory

from rpc import memory, wire
from rpc.errors import BrokerError, SerializationError
from rpc.transport import _pyamqp
from rpc.transport.confirms import Confirms
from rpc.transport.delivery import DeliveryCallback, from_message, from_returned

if TYPE_CHECKING:
    import socket

    from rpc.transport.dispatching import Dispatcher
    from rpc.transport.reading import ReadingRole

log = logging.getLogger("rpc.transport")

#: Seconds a socket read may block before the connection is declared dead: reads
#: start once bytes are there, so only a frame cut off midway can wait this long.
READ_TIMEOUT = 10.0
#: Largest message (bytes) packed here and, as a reply, sent in one socket write
#: with the ack of its request; a larger one goes frame by frame through py-amqp,
#: each frame with the whole write timeout.
ONE_WRITE_MAX = 64 * 1024
#: Longest idle wait of transports without a socket (Kombu's memory transport);
#: publishes wake the waiting I/O threads at once, this only bounds a missed wake-up.
POLL_INTERVAL = 0.05
#: Messages delivered per hold of the connection lock.
FRAMES_PER_LOCK = 64


class Driver(Protocol):
    """One live connection's way to publish, acknowledge and read."""

    #: The socket to wait on; None for in-process transports, which are polled.
    sock: socket.socket | None
    reader: wire.FrameReader | None
    #: The py-amqp connection the reader's frames belong to, when there is one.
    raw: Any
    #: Whether RabbitMQ's direct reply-to pseudo-queue is there.
    direct_reply_to: bool
    #: Whether deliveries to our consumers may be decoded straight off the socket.
    direct_delivery: bool

    def publish(
        self,
        channel: Any,
        body: bytes,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        properties: dict[str, Any],
    ) -> bool:
        """Publish; False when an in-process transport had no queue to route it to.

        ``properties`` holds content_type, content_encoding, application_headers and
        the other AMQP message properties. SerializationError, with nothing
        written, when they cannot be encoded.
        """

    def ack(self, channel: Any, delivery_tag: int | str) -> None: ...

    def reject(self, channel: Any, delivery_tag: int | str, requeue: bool) -> None: ...

    def one_write(self) -> AbstractContextManager[None]:
        """Gather the frames written inside into one socket write, if there is one."""

    def cancel(self, channel: Any, consumer_tag: str) -> None: ...

    def on_return(
        self, channel: Any, callback: DeliveryCallback, generation: int
    ) -> None: ...

    def open_confirms(self, confirms: Confirms) -> Any:
        """A channel in confirm mode settling ``confirms``; None if there are none."""

    def turn(self, reading: ReadingRole) -> None:
        """One turn of the I/O thread: wait for frames, deliver them."""

    def interrupt(self) -> None:
        """Cut short a wait of :meth:`turn`."""


def open_driver(
    connection: KombuConnection, dispatcher: Dispatcher | None = None
) -> Driver:
    """The driver for a connected Kombu connection, after the transport it uses.

    On py-amqp, ``dispatcher`` sees every frame py-amqp reads for itself first.
    """
    if connection.transport.driver_type == "amqp":
        return AmqpDriver(connection, dispatcher)
    return MemoryDriver(connection)


def kombu_transport(url: str) -> Any:
    """The Kombu transport class for ``url``: ours for ``memory://``, else Kombu's."""
    return memory.transport_for(url)


class AmqpDriver:
    """RabbitMQ through py-amqp, the hot path's frames packed by :mod:`rpc.wire`."""

    direct_reply_to = True
    direct_delivery = True

    def __init__(
        self, connection: KombuConnection, dispatcher: Dispatcher | None = None
    ) -> None:
        self._connection = connection
        _pyamqp.skip_poll_before_publish(connection)
        raw = _pyamqp.raw_connection(connection)
        self.raw: Any = raw
        transport = getattr(raw, "transport", None)
        _pyamqp.bound_reads(transport, READ_TIMEOUT)
        sock = _pyamqp.socket_of(connection)
        reader = _pyamqp.buffer_reads(transport)
        if sock is None or reader is None:
            raise BrokerError("the py-amqp connection has no socket to read")
        if dispatcher is not None:
            # py-amqp waiting for a declaration's answer reads deliveries too:
            # ours must not reach its decoder.
            _pyamqp.route_reads(
                transport,
                dispatcher.frames_for_py_amqp(reader, lambda: _pyamqp.count_read(raw)),
            )
        self.sock: socket.socket | None = sock
        self.reader: wire.FrameReader | None = reader

    def publish(
        self,
        channel: Any,
        body: bytes,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        properties: dict[str, Any],
    ) -> bool:
        if len(body) <= ONE_WRITE_MAX:
            raw = _pyamqp.writable(channel)
            if raw is not None:
                frames = wire.publish_frames(
                    channel.channel_id,
                    raw.frame_max,
                    exchange,
                    routing_key,
                    mandatory,
                    body,
                    properties,
                )
                if frames is not None:
                    _pyamqp.write_frames(raw, frames)
                    return True
        message = _prepare(channel, body, properties)
        # Not the common case: the hot path's messages were packed above.
        unencodable = _pyamqp.encodable(message, exchange, routing_key)
        if unencodable is not None:
            raise SerializationError(
                f"message properties cannot be encoded: {unencodable}"
            )
        if mandatory:
            channel.basic_publish(
                message, exchange=exchange, routing_key=routing_key, mandatory=True
            )
        else:
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
        return True

    def ack(self, channel: Any, delivery_tag: int | str) -> None:
        raw = _pyamqp.writable(channel)
        if raw is None or not isinstance(delivery_tag, int):
            channel.basic_ack(delivery_tag)
            return
        _pyamqp.write_frames(raw, wire.ack_frame(channel.channel_id, delivery_tag))

    def reject(self, channel: Any, delivery_tag: int | str, requeue: bool) -> None:
        channel.basic_reject(delivery_tag, requeue=requeue)

    def one_write(self) -> AbstractContextManager[None]:
        return _pyamqp.one_write(self.raw)

    def cancel(self, channel: Any, consumer_tag: str) -> None:
        # The broker may be gone without a word (a dead link not yet found by
        # heartbeats): waiting for basic.cancel-ok under the lock would then block
        # every thread of the owner.
        channel.basic_cancel(consumer_tag, nowait=True)

    def on_return(
        self, channel: Any, callback: DeliveryCallback, generation: int
    ) -> None:
        events = getattr(channel, "events", None)
        if events is None:
            return

        def returned(exc: Any, exchange: str, routing_key: str, message: Any) -> None:
            try:
                callback(from_message(message, generation))
            except Exception:
                log.exception("return callback failed")

        events["basic_return"].add(returned)

    def open_confirms(self, confirms: Confirms) -> Any:
        channel = self._connection.channel()
        confirms.listen(channel)
        return channel

    def turn(self, reading: ReadingRole) -> None:
        assert self.sock is not None and self.reader is not None
        reading.pump(self.sock, self.reader)

    def interrupt(self) -> None:
        """The link's wake socket interrupts select(): nothing more to do."""


def _prepare(channel: Any, body: bytes, properties: dict[str, Any]) -> Any:
    properties = dict(properties)
    content_type = properties.pop("content_type", None)
    content_encoding = properties.pop("content_encoding", None)
    headers = properties.pop("application_headers", None)
    return channel.prepare_message(
        body,
        None,
        content_type,
        content_encoding,
        dict(headers) if headers else {},
        properties,
    )


class _Bell:
    """Wakes the I/O threads of in-process transports, which have no socket to wait on.

    Kombu's virtual transports can only be polled. Every publish, ack and reject on one
    rings the bell, so a polling thread sleeps only while nothing at all happens.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.rung = 0

    def ring(self) -> None:
        with self._condition:
            self.rung += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Sleep up to ``timeout`` unless the bell rang after ``seen`` was read."""
        with self._condition:
            if self.rung == seen:
                self._condition.wait(timeout)


_BELL = _Bell()


def reset_memory_broker() -> None:
    """Forget every queue, exchange and binding of Kombu's in-memory transport.

    That state is process-wide whatever the URL says: tests reset it between runs, as
    each integration test gets a fresh vhost on RabbitMQ.
    """
    kombu_memory.Transport.global_state.clear()
    kombu_memory.Channel.queues.clear()
    kombu_memory.Channel.events.clear()
    _BELL.ring()


class MemoryDriver:
    """Kombu's virtual transports, made to route and return as RabbitMQ does."""

    sock: socket.socket | None = None
    reader: wire.FrameReader | None = None
    raw: Any = None
    direct_reply_to = False
    direct_delivery = False

    def __init__(self, connection: KombuConnection) -> None:
        self._connection = connection
        self._returns: DeliveryCallback | None = None

    def publish(
        self,
        channel: Any,
        body: bytes,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        properties: dict[str, Any],
    ) -> bool:
        # Kombu's virtual transports know no mandatory flag and park what nothing
        # routes in a dead-letter queue. Do as RabbitMQ does: return a mandatory
        # message to its publisher, drop any other.
        message = _prepare(channel, body, properties)
        headers = message.get("headers") or {}
        if _route_exists(channel, exchange, routing_key, headers):
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
            _BELL.ring()
            return True
        callback = self._returns
        if mandatory and callback is not None:
            try:
                callback(from_returned(message, exchange, routing_key))
            except Exception:
                log.exception("return callback failed")
        return False

    def ack(self, channel: Any, delivery_tag: int | str) -> None:
        channel.basic_ack(delivery_tag)
        _BELL.ring()  # a prefetch slot is free again

    def reject(self, channel: Any, delivery_tag: int | str, requeue: bool) -> None:
        channel.basic_reject(delivery_tag, requeue=requeue)
        _BELL.ring()

    def one_write(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def cancel(self, channel: Any, consumer_tag: str) -> None:
        channel.basic_cancel(consumer_tag)

    def on_return(
        self, channel: Any, callback: DeliveryCallback, generation: int
    ) -> None:
        self._returns = callback

    def open_confirms(self, confirms: Confirms) -> Any:
        # No confirms here: taken is taken, and a mandatory message nothing routes
        # is known at once.
        return None

    def turn(self, reading: ReadingRole) -> None:
        seen = _BELL.rung  # read first: a publish from now on cuts the wait short
        with reading.lock:
            more = _drain(self._connection)
        if not more:
            _BELL.wait(seen, POLL_INTERVAL)

    def interrupt(self) -> None:
        _BELL.ring()


def _drain(connection: KombuConnection) -> bool:
    """Deliver what is waiting, up to a batch; True when more may be waiting."""
    for _ in range(FRAMES_PER_LOCK):
        try:
            connection.drain_events(timeout=0)
        except TimeoutError:  # socket.timeout: nothing waiting
            return False
    return True


def _route_exists(
    channel: Any, exchange: str, routing_key: str, headers: Mapping[str, Any]
) -> bool:
    """Whether RabbitMQ would route this publish to at least one queue."""
    if isinstance(channel, memory.Channel):
        return bool(channel.routes(exchange, routing_key, headers))
    if not exchange:
        return bool(channel._has_queue(routing_key))
    try:
        table = channel.get_table(exchange)
    except KeyError:
        return False
    return bool(channel.typeof(exchange).lookup(table, exchange, routing_key, None))
