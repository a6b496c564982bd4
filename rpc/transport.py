"""Kombu connections shared by threads: connect, heartbeats, reconnect with backoff.

py-amqp connections are not thread-safe. A :class:`BrokerConnection` owns one Kombu
connection and one channel; its I/O thread waits on the socket and reads frames, and
any thread may publish or acknowledge by taking the connection's lock. Publishers
never hand work to another thread, which keeps a call's latency to one socket write.

Reading is a role rather than a thread: a thread that is about to block until
something arrives (a caller waiting for its reply, an idle handler thread waiting for
work) may borrow it with :meth:`BrokerConnection.read_until`. The I/O thread then
steps aside and that thread reads the frames itself, so the answer it waits for
reaches it without crossing to another thread: on a busy machine each such
hand-off (a wake-up and a switch of the GIL) costs more than the Python work of a
whole call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from kombu.connection import Connection as KombuConnection
from kombu.transport import memory as kombu_memory
from kombu.transport import virtual as kombu_virtual

from rpc import memory, wire
from rpc.errors import BrokerError

log = logging.getLogger(__name__)

#: Longest wait between two reconnection attempts, in seconds.
MAX_BACKOFF = 5.0
FIRST_BACKOFF = 0.1
#: Seconds a socket write may block before the connection is declared dead.
WRITE_TIMEOUT = 10.0
#: Seconds a socket read may block before the connection is declared dead: reads
#: start once bytes are there, so only a frame cut off midway can wait this long.
READ_TIMEOUT = 10.0
#: Longest idle wait of transports without a socket (Kombu's memory transport);
#: publishes wake the waiting I/O threads at once, this only bounds a missed wake-up.
POLL_INTERVAL = 0.05
#: Seconds a clean close waits for the broker to answer before dropping the socket.
CLOSE_TIMEOUT = 2.0
#: Frames read per hold of the connection lock.
FRAMES_PER_LOCK = 64
#: Seconds the I/O thread leaves the socket to a thread that just stopped reading
#: it: longest delay of a frame nobody waits for (a reply to a call nobody asks the
#: result of yet) right after a borrowed read.
READ_GRACE = 0.002
#: A borrowed read that lasts longer than this (seconds) is a thread waiting for
#: work rather than for a reply: the I/O thread sleeps through it instead of polling.
LONG_BORROW = 0.05
#: Largest reply (bytes) sent in one socket write with the ack of its request; a
#: larger one goes frame by frame, each frame with the whole write timeout.
ONE_WRITE_MAX = 64 * 1024

RECONNECTING = "%s: connection lost (%s); reconnecting"
RECONNECTED = "%s: connected to %s"


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """A message as it came off the broker, in our own terms."""

    body: bytes
    content_type: str | None
    headers: Mapping[str, Any]
    correlation_id: str | None
    reply_to: str | None
    #: An int on AMQP; Kombu's virtual transports tag deliveries with uuid strings.
    delivery_tag: int | str
    redelivered: bool
    routing_key: str
    exchange: str
    consumer_tag: str
    #: Connection generation it arrived on: acks are only valid on the same one.
    generation: int
    properties: Mapping[str, Any]


def _to_delivery(message: Any, generation: int) -> Delivery:
    # py-amqp and Kombu's virtual transports spell a message differently.
    properties = message.properties
    info = message.delivery_info or {}  # None on returned messages
    headers = properties.get("application_headers") or getattr(message, "headers", None)
    content_type = properties.get("content_type") or getattr(
        message, "content_type", None
    )
    body = message.body
    if isinstance(body, str):
        body = body.encode()
    return Delivery(
        body=body,
        content_type=content_type,
        headers=headers or {},
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        delivery_tag=info.get("delivery_tag") or _attribute(message, "delivery_tag"),
        redelivered=bool(
            info.get("redelivered") or getattr(message, "redelivered", False)
        ),
        routing_key=info.get("routing_key", ""),
        exchange=info.get("exchange", ""),
        consumer_tag=info.get("consumer_tag", ""),
        generation=generation,
        properties=properties,
    )


def _attribute(message: Any, name: str) -> int | str:
    # py-amqp's returned messages have no delivery_info, and its property then fails.
    try:
        value = getattr(message, name)
    except (AttributeError, KeyError, TypeError):
        return 0
    return value if isinstance(value, (int, str)) else 0


DeliveryCallback = Callable[[Delivery], None]


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


def _is_virtual(channel: Any) -> bool:
    return isinstance(channel, kombu_virtual.Channel)


def _virtual_route_exists(
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


def _returned(message: Mapping[str, Any], exchange: str, routing_key: str) -> Delivery:
    properties = dict(message.get("properties") or {})
    return Delivery(
        body=message["body"],
        content_type=message.get("content-type"),
        headers=message.get("headers") or {},
        correlation_id=properties.get("correlation_id"),
        reply_to=properties.get("reply_to"),
        delivery_tag=0,
        redelivered=False,
        routing_key=routing_key,
        exchange=exchange,
        consumer_tag="",
        generation=0,
        properties=properties,
    )


class BrokerConnection:
    """One broker connection, kept alive and shared by every thread of its owner.

    ``on_connect(channel)`` runs under the lock after every (re)connection and must
    declare what the owner needs and start its consumers. ``on_disconnect(exc)`` runs
    when the connection is lost, before reconnection starts, so the owner can fail
    what was in flight. ``on_tick()`` runs on the I/O thread about once a second.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        heartbeat: float = 30.0,
        connect_timeout: float = 10.0,
        on_connect: Callable[[Any], None],
        on_disconnect: Callable[[BaseException], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        reconnect: bool = True,
        confirms: bool = False,
    ) -> None:
        self.url = url
        self.name = name
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_tick = on_tick
        self._reconnect = reconnect
        self._lock = threading.RLock()
        self._connection: KombuConnection | None = None
        #: The live connection's socket, looked up once per connection.
        self._sock: socket.socket | None = None
        self._reader: wire.FrameReader | None = None
        #: Our consumers by channel id and consumer tag, with the connection
        #: generation they started on: deliveries to them skip py-amqp's dispatch.
        self._consumers: dict[tuple[int, str], tuple[DeliveryCallback, int]] = {}
        self._channel: Any = None
        self._generation = 0
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._next_heartbeat_check = 0.0
        self._confirms = confirms
        self._confirm_channel: Any = None
        self._confirm_tag = 0
        #: delivery tag -> (future, message id) of publishes not confirmed yet
        self._unconfirmed: dict[int, tuple[Future[bool], str]] = {}
        #: message ids the broker returned as unroutable, awaiting their confirm
        self._returned: set[str] = set()
        self._virtual_return: DeliveryCallback | None = None
        #: Held by whichever thread reads the socket (the I/O thread or a borrower).
        self._read_token = threading.Lock()
        #: Set while a thread other than the I/O thread has borrowed the reading.
        self._borrowed = False
        #: When the last borrower gave the reading back (monotonic seconds).
        self._borrow_ended = 0.0
        self._borrow_started = 0.0
        #: Set while the I/O thread waits in select(): a borrower must wake it.
        self._io_reading = False
        #: Set while the I/O thread sleeps through a long borrow: its end must wake it.
        self._io_sleeping = False
        self._borrow_changed = threading.Condition()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect (retrying until ``connect_timeout``) and start the I/O thread."""
        if self._stopping.is_set():
            raise BrokerError(f"{self.name}: a stopped connection cannot start again")
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        deadline = time.monotonic() + self._connect_timeout
        backoff = FIRST_BACKOFF
        while True:
            try:
                self._connect()
                break
            except BrokerError:
                if time.monotonic() + backoff > deadline:
                    # The caller may start again later: leave no sockets behind.
                    self._close_wake_sockets()
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self._thread = threading.Thread(
            target=self._run, name=f"rpc-io-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the connection and end the I/O thread; safe to call twice."""
        self._stopping.set()
        self._wake()
        _BELL.ring()
        if self._thread is not None and self._thread is not threading.current_thread():
            # Long enough for a connection attempt in progress to give up.
            self._thread.join(timeout=min(self._connect_timeout, 5.0) + CLOSE_TIMEOUT)
        with self._lock:
            self._close_connection(graceful=True)
        self._close_wake_sockets()

    def _close_wake_sockets(self) -> None:
        for sock in (self._wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()
        self._wake_reader = self._wake_writer = None

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def generation(self) -> int:
        """Increases on every successful connection."""
        return self._generation

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected, or ``timeout`` seconds; True if connected."""
        return self._connected.wait(max(timeout, 0))

    @property
    def supports_direct_reply_to(self) -> bool:
        """True on RabbitMQ; Kombu's virtual transports need a reply queue."""
        connection = self._connection
        return connection is not None and connection.transport.driver_type == "amqp"

    @property
    def has_socket(self) -> bool:
        return self._socket() is not None

    # -- operations for any thread -------------------------------------------------

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        """Hold the lock and use the live channel; BrokerError if there is none."""
        with self._lock:
            channel = self._live_channel()
            try:
                yield channel
            except self._errors() as exc:
                raise self._failed(exc) from exc
            finally:
                # A synchronous method (a declare, basic.get) read its answer
                # through the buffer: frames after it left the socket, and a reader
                # waiting in select() would not see them until its timeout.
                reader = self._reader
                if reader is not None and reader.has_frame():
                    self._wake()

    def _live_channel(self) -> Any:
        # Callers hold the lock.
        if not self._connected.is_set() or self._channel is None:
            raise BrokerError(f"not connected to the broker ({self.name})")
        return self._channel

    def _failed(self, exc: BaseException) -> BrokerError:
        # The link is broken: have the I/O thread notice and reconnect.
        self._connected.clear()
        self._wake()
        return BrokerError(f"broker connection failed: {exc}")

    def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        content_type: str,
        content_encoding: str = "utf-8",
        headers: Mapping[str, Any] | None = None,
        mandatory: bool = False,
        **properties: Any,
    ) -> None:
        """Publish one message on the shared channel."""
        # The lock is taken directly, not through channel(): this is the hot path,
        # and a generator-based context manager costs several times a lock.
        with self._lock:
            channel = self._live_channel()
            try:
                self._publish(
                    channel,
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    content_type=content_type,
                    content_encoding=content_encoding,
                    headers=headers,
                    mandatory=mandatory,
                    properties=properties,
                )
            except self._errors() as exc:
                raise self._failed(exc) from exc

    def publish_on(
        self,
        channel: Any,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        content_type: str,
        headers: Mapping[str, Any] | None = None,
        mandatory: bool = False,
        **properties: Any,
    ) -> None:
        """Publish on the channel ``on_connect`` was given, before others may publish.

        For an owner that must re-send messages once its consumers are back (a
        proxy re-sending idempotent calls); errors propagate and fail the set-up.
        """
        self._publish(
            channel,
            body,
            exchange=exchange,
            routing_key=routing_key,
            content_type=content_type,
            content_encoding="utf-8",
            headers=headers,
            mandatory=mandatory,
            properties=properties,
        )

    def _publish(
        self,
        channel: Any,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        content_type: str,
        content_encoding: str,
        headers: Mapping[str, Any] | None,
        mandatory: bool,
        properties: dict[str, Any],
    ) -> bool:
        """Publish; False when an in-process transport had no queue to route it to."""
        if len(body) <= ONE_WRITE_MAX and _publish_packed(
            channel,
            body,
            exchange,
            routing_key,
            mandatory,
            {
                "content_type": content_type,
                "content_encoding": content_encoding,
                "application_headers": headers or None,
                **properties,
            },
        ):
            return True
        message = channel.prepare_message(
            body,
            None,
            content_type,
            content_encoding,
            dict(headers) if headers else {},
            properties,
        )
        if _is_virtual(channel):
            return self._publish_virtual(
                channel, message, exchange, routing_key, mandatory
            )
        if mandatory:
            channel.basic_publish(
                message, exchange=exchange, routing_key=routing_key, mandatory=True
            )
        else:
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
        return True

    def _publish_virtual(
        self,
        channel: Any,
        message: Any,
        exchange: str,
        routing_key: str,
        mandatory: bool,
    ) -> bool:
        # Kombu's virtual transports know no mandatory flag and park what nothing
        # routes in a dead-letter queue. Do as RabbitMQ does: return a mandatory
        # message to its publisher, drop any other.
        headers = message.get("headers") or {}
        if _virtual_route_exists(channel, exchange, routing_key, headers):
            channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
            _BELL.ring()
            return True
        callback = self._virtual_return
        if mandatory and callback is not None:
            try:
                callback(_returned(message, exchange, routing_key))
            except Exception:
                log.exception("%s: return callback failed", self.name)
        return False

    def publish_and_ack(
        self, delivery: Delivery, body: bytes | None, **publish: Any
    ) -> None:
        """Publish a reply (if any) then acknowledge ``delivery``, in one lock hold.

        Order matters: a crash between the two redelivers the request rather than
        losing it. An ack for a delivery from an earlier connection is skipped: the
        broker has already requeued that message.
        """
        small = body is None or len(body) <= ONE_WRITE_MAX
        with self._lock:
            channel = self._live_channel()
            try:
                with self._one_write() if small else contextlib.nullcontext():
                    self._publish_then_ack(channel, delivery, body, publish)
            except self._errors() as exc:
                raise self._failed(exc) from exc

    def _publish_then_ack(
        self,
        channel: Any,
        delivery: Delivery,
        body: bytes | None,
        publish: dict[str, Any],
    ) -> None:
        if body is not None:
            publish.setdefault("content_encoding", "utf-8")
            publish.setdefault("headers", None)
            publish.setdefault("mandatory", False)
            properties = publish.pop("properties", {})
            self._publish(channel, body, properties=properties, **publish)
        if delivery.generation == self._generation:
            tag = delivery.delivery_tag
            if _is_virtual(channel):
                channel.basic_ack(tag)
                _BELL.ring()  # a prefetch slot is free again
            elif not _ack_packed(channel, tag):
                channel.basic_ack(tag)

    @contextlib.contextmanager
    def _one_write(self) -> Iterator[None]:
        """Send the frames written inside as one socket write; callers hold the lock.

        A reply and the ack of its request then cost one system call, and one
        release of the GIL, instead of two. py-amqp writes every frame through its
        transport's ``_write``; where that is not there, frames go out one by one.
        """
        connection = self._connection
        transport: Any = None
        if connection is not None and self._socket() is not None:
            transport = getattr(_raw(connection), "transport", None)
        send = getattr(transport, "_write", None)
        if transport is None or send is None:
            yield
            return
        own = "_write" in vars(transport)
        chunks: list[bytes] = []
        transport._write = lambda data: chunks.append(bytes(data))
        try:
            yield
        finally:
            if own:
                transport._write = send
            else:
                del transport._write
        if chunks:
            transport.write(b"".join(chunks))

    def publish_confirmed(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        content_type: str,
        content_encoding: str = "utf-8",
        headers: Mapping[str, Any] | None = None,
        mandatory: bool = False,
        **properties: Any,
    ) -> Future[bool]:
        """Publish on the confirm channel; the future resolves when the broker confirms.

        Its result is True once the broker has taken the message (written to disk
        first when it is persistent and its queue durable), False when a mandatory
        message could not be routed to any queue; a nack or a lost connection fails
        it with BrokerError. The wait happens in the caller, never under the lock,
        so any number of threads can have publishes in flight: whichever thread
        reads the broker's acks matches them by delivery tag. Needs ``confirms=True``.
        """
        future: Future[bool] = Future()
        message_id = properties.setdefault("message_id", uuid.uuid4().hex)
        with self.channel() as channel:
            confirm_channel = self._confirm_channel
            if confirm_channel is None:
                # No confirms on this transport (Kombu's memory://): taken is taken,
                # and a mandatory message nothing routes is known at once.
                routed = self._publish(
                    channel,
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    content_type=content_type,
                    content_encoding=content_encoding,
                    headers=headers,
                    mandatory=mandatory,
                    properties=properties,
                )
                future.set_result(routed or not mandatory)
                return future
            # Tags count publishes on the channel, from 1 after confirm.select.
            self._confirm_tag += 1
            self._unconfirmed[self._confirm_tag] = (future, message_id)
            try:
                self._publish(
                    confirm_channel,
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    content_type=content_type,
                    content_encoding=content_encoding,
                    headers=headers,
                    mandatory=mandatory,
                    properties=properties,
                )
            except BaseException:
                self._unconfirmed.pop(self._confirm_tag, None)
                raise
        return future

    def _open_confirm_channel(self, connection: KombuConnection) -> None:
        channel = connection.channel()
        if not hasattr(channel, "confirm_select"):
            return
        # A plain confirm.select: py-amqp's own confirm mode would block every
        # publish until its ack arrives; the acks are handled as events instead.
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_confirm_ack)
        channel.events["basic_nack"].add(self._on_confirm_nack)
        channel.events["basic_return"].add(self._on_confirm_return)
        self._confirm_channel = channel
        self._confirm_tag = 0

    def _on_confirm_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, None)

    def _on_confirm_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(
            delivery_tag, multiple, BrokerError("the broker refused the message (nack)")
        )

    def _on_confirm_return(
        self, exc: Any, exchange: str, routing_key: str, message: Any
    ) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        message_id = message.properties.get("message_id")
        if message_id:
            self._returned.add(message_id)

    def _settle(self, tag: int, multiple: bool, error: BrokerError | None) -> None:
        tags = [t for t in self._unconfirmed if t <= tag] if multiple else [tag]
        for each in tags:
            entry = self._unconfirmed.pop(each, None)
            if entry is None:
                continue
            future, message_id = entry
            routed = message_id not in self._returned
            self._returned.discard(message_id)
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(routed)

    def _fail_unconfirmed(self, error: BrokerError) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        self._returned.clear()
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(error)

    def read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read frames on this thread until ``done()`` or ``timeout`` seconds pass.

        For a thread that would otherwise block until a frame arrives: it becomes
        the reader while the I/O thread steps aside, and every callback runs here.
        Returns False at once, having read nothing, when it cannot borrow the
        reading (another thread has it, the transport has no socket, this is the
        I/O thread): the caller then waits as it would have anyway. A broken link
        is handed to the I/O thread, which reconnects; this thread just returns.
        """
        if timeout <= 0 or threading.current_thread() is self._thread:
            return False
        sock = self._socket()
        if sock is None or not self._connected.is_set():
            return False
        with self._borrow_changed:
            if self._borrowed:
                return False
            self._borrowed = True
            self._borrow_started = time.monotonic()
            in_select = self._io_reading
        try:
            deadline = time.monotonic() + timeout
            if in_select:
                self._wake()  # the I/O thread leaves select() and steps aside
            if not self._read_token.acquire(timeout=timeout):
                return True
            try:
                self._read_while(sock, done, deadline)
            finally:
                self._read_token.release()
        finally:
            with self._borrow_changed:
                self._borrowed = False
                self._borrow_ended = time.monotonic()
                if self._io_sleeping:
                    self._borrow_changed.notify()
        return True

    def interrupt_reader(self) -> None:
        """Have a thread in :meth:`read_until` look at its ``done()`` again now."""
        self._wake()

    def _read_while(
        self, sock: socket.socket, done: Callable[[], bool], deadline: float
    ) -> None:
        # The caller holds the read token.
        interval = self._tick_interval()
        wake = self._wake_reader
        while not done() and self._connected.is_set() and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._socket() is not sock or wake is None:
                return  # reconnected meanwhile: the I/O thread owns the new link
            try:
                # The wake socket is free while the I/O thread stands aside: a
                # failure noticed elsewhere, or stop(), interrupts this wait.
                readable = _readable(sock, wake, min(remaining, interval), self._reader)
                if wake in readable:
                    with contextlib.suppress(OSError):
                        wake.recv(4096)
                self._drain(sock, readable, done)
            except Exception as exc:
                self._failed(exc)  # the I/O thread notices and reconnects
                return

    def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer without waiting for the broker's answer.

        The broker may be gone without a word (a dead link not yet found by
        heartbeats); waiting for ``basic.cancel-ok`` under the lock would then block
        every thread of the owner.
        """
        with self.channel() as channel:
            self._consumers.pop((channel.channel_id, consumer_tag), None)
            if self.has_socket:
                channel.basic_cancel(consumer_tag, nowait=True)
            else:
                channel.basic_cancel(consumer_tag)

    def ack(self, delivery: Delivery) -> None:
        self.publish_and_ack(delivery, None)

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Give a delivery back (``requeue``) or drop it; a no-op after reconnecting."""
        with self.channel() as channel:
            if delivery.generation == self._generation:
                channel.basic_reject(delivery.delivery_tag, requeue=requeue)
                if _is_virtual(channel):
                    _BELL.ring()

    def consume(
        self,
        channel: Any,
        queue: str,
        callback: DeliveryCallback,
        *,
        no_ack: bool = False,
        consumer_tag: str = "",
    ) -> str:
        """Start a consumer; for use inside ``on_connect``. Returns the consumer tag."""
        generation = self._generation

        def on_message(message: Any) -> None:
            try:
                delivery = _to_delivery(message, generation)
                if not delivery.consumer_tag and consumer_tag:
                    # Kombu's virtual transports leave it out of delivery_info.
                    delivery = dataclasses.replace(delivery, consumer_tag=consumer_tag)
                callback(delivery)
            except Exception:
                # A bad message must never take the connection down with it.
                log.exception("%s: consumer callback failed", self.name)

        tag: str = channel.basic_consume(
            queue=queue, no_ack=no_ack, callback=on_message, consumer_tag=consumer_tag
        )
        tag = tag or consumer_tag
        if self._socket() is not None and not _is_virtual(channel):
            self._consumers[(channel.channel_id, tag)] = (callback, generation)
        return tag

    def on_return(self, channel: Any, callback: DeliveryCallback) -> None:
        """Have ``callback`` see mandatory messages the broker could not route."""
        if _is_virtual(channel):
            self._virtual_return = callback
            return
        events = getattr(channel, "events", None)
        if events is None:
            return
        generation = self._generation

        def returned(exc: Any, exchange: str, routing_key: str, message: Any) -> None:
            try:
                callback(_to_delivery(message, generation))
            except Exception:
                log.exception("%s: return callback failed", self.name)

        events["basic_return"].add(returned)

    # -- the I/O thread ------------------------------------------------------------

    def _connect(self) -> None:
        connection = KombuConnection(
            self.url,
            transport=memory.transport_for(self.url),
            heartbeat=self._heartbeat or None,
            connect_timeout=min(self._connect_timeout, 5.0),
            # SO_SNDTIMEO and SO_RCVTIMEO: a socket call blocked this long means a
            # dead link (frames are read only once select() saw bytes).
            transport_options={
                "write_timeout": WRITE_TIMEOUT,
                "read_timeout": READ_TIMEOUT,
            },
        )
        try:
            connection.connect()
            channel = connection.channel()
        except Exception as exc:
            with contextlib.suppress(Exception):
                connection.release()
            raise BrokerError(f"cannot connect to {self._safe_url()}: {exc}") from exc
        _skip_poll_before_publish(connection)
        raw_transport = getattr(_raw(connection), "transport", None)
        _bound_reads(raw_transport)
        with self._lock:
            self._connection = connection
            self._sock = self._find_socket()
            self._reader = _buffer_reads(raw_transport) if self._sock else None
            self._channel = channel
            self._generation += 1
            try:
                self._on_connect(channel)
                if self._confirms:
                    self._open_confirm_channel(connection)
            except BrokerError:
                self._close_connection()
                raise
            except connection.connection_errors + connection.channel_errors as exc:
                self._close_connection()
                raise BrokerError(f"broker refused the set-up: {exc}") from exc
            self._connected.set()
        log.debug(RECONNECTED, self.name, self._safe_url())

    def _safe_url(self) -> str:
        connection = self._connection
        if connection is not None:
            return str(connection.as_uri())
        return str(KombuConnection(self.url).as_uri())

    def _errors(self) -> tuple[type[BaseException], ...]:
        connection = self._connection
        base: tuple[type[BaseException], ...] = (OSError,)
        if connection is None:
            return base
        return (
            base
            + tuple(connection.connection_errors)
            + tuple(connection.channel_errors)
        )

    def _socket(self) -> socket.socket | None:
        """The socket of the live connection; None on in-process transports."""
        return self._sock

    def _find_socket(self) -> socket.socket | None:
        connection = self._connection
        if connection is None or connection.transport.driver_type != "amqp":
            return None
        # Not py-amqp's ``sock`` property: once the link is gone, it warns and
        # tries to connect again.
        transport = getattr(_raw(connection), "_transport", None)
        raw = getattr(transport, "sock", None)
        return raw if isinstance(raw, socket.socket) else None

    def _wake(self) -> None:
        if self._wake_writer is not None:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")

    def _close_connection(self, *, graceful: bool = False) -> None:
        """Drop the connection; ``graceful`` says goodbye to the broker first.

        A goodbye waits for the broker's answer, which never comes from a peer that
        vanished: it is bounded by :data:`CLOSE_TIMEOUT`, and a lost connection is
        only torn down locally.
        """
        self._connected.clear()
        sock, self._sock = self._sock, None
        self._reader = None
        self._consumers = {}
        connection, self._connection, self._channel = self._connection, None, None
        self._confirm_channel = None
        # Whether the broker took these is unknown: the publisher decides to resend.
        self._fail_unconfirmed(
            BrokerError("connection lost before the broker confirmed the message")
        )
        if connection is None:
            return
        if graceful:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(CLOSE_TIMEOUT)
            with contextlib.suppress(Exception):
                connection.release()
                return
        with contextlib.suppress(Exception):
            connection.collect()

    def _run(self) -> None:
        last_tick = 0.0
        while not self._stopping.is_set():
            try:
                if not self._connected.is_set():
                    raise BrokerError("connection marked as lost")
                self._pump()
            except Exception as exc:  # every failure of the link ends up here
                if self._stopping.is_set():
                    break
                self._lost(exc)
                continue
            now = time.monotonic()
            if self._on_tick is not None and now - last_tick >= 1.0:
                last_tick = now
                try:
                    self._on_tick()
                except Exception:
                    log.exception("%s: periodic task failed", self.name)

    def _pump(self) -> None:
        sock = self._socket()
        if sock is None:
            seen = _BELL.rung  # read first: a publish from now on cuts the wait short
            with self._lock:
                connection = self._connection
                if connection is None:
                    raise BrokerError("connection closed")
                more = _drain_virtual(connection)
            if not more:
                _BELL.wait(seen, POLL_INTERVAL)
            return
        interval = self._tick_interval()
        with self._borrow_changed:
            now = time.monotonic()
            if self._borrowed and now - self._borrow_started > LONG_BORROW:
                # A long wait (an idle worker's handler thread waiting for work):
                # sleep until it ends, and have the borrower say when.
                self._io_sleeping = True
                self._borrow_changed.wait(interval)
                self._io_sleeping = False
                parked = True
            elif self._borrowed or now - self._borrow_ended < READ_GRACE:
                # Short borrows, one after the other (a caller making call after
                # call): look again in a moment rather than be told each time, and
                # stay out of select() so that the next borrower need not wake us.
                self._borrow_changed.wait(READ_GRACE)
                parked = True
            else:
                self._io_reading = True
                parked = False
        if parked:
            with self._lock:
                self._heartbeat_tick()
            return
        wake = self._wake_reader
        assert wake is not None
        try:
            if not self._read_token.acquire(timeout=READ_GRACE):
                # A borrower took the socket between our look and here: it reads.
                # Waiting for the token would hold up the periodic work until its
                # read ends, which may be a caller's whole deadline.
                return
            try:
                readable = _readable(sock, wake, interval, self._reader)
                if wake in readable:
                    with contextlib.suppress(OSError):
                        wake.recv(4096)
                self._drain(sock, readable)
            finally:
                self._read_token.release()
        finally:
            with self._borrow_changed:
                self._io_reading = False

    def _tick_interval(self) -> float:
        return min(1.0, self._heartbeat / 4) if self._heartbeat else 1.0

    def _drain(
        self,
        sock: socket.socket,
        readable: list[socket.socket],
        enough: Callable[[], bool] | None = None,
    ) -> None:
        """Read the frames waiting on ``sock``; the caller holds the read token.

        With ``enough``, stop as soon as it is true: a borrower whose wait is over
        leaves the rest to the next reader rather than look for more.
        """
        if not self._lock.acquire(blocking=False):
            self._lock.acquire()
            # Whoever held the lock may have read what select() saw: a synchronous
            # AMQP method (a declare, basic.get) reads its answer itself. Look again
            # rather than block in recv() on bytes that are gone.
            readable = _readable(sock, None, 0, self._reader)
        try:
            connection = self._connection
            reader = self._reader
            if connection is None or reader is None or self._socket() is not sock:
                raise BrokerError("connection closed")
            raw = _raw(connection)
            if raw is None:
                raise BrokerError("connection closed")
            try:
                # Read a bounded batch per lock hold so publishers are never starved.
                for _ in range(FRAMES_PER_LOCK):
                    if sock not in readable and not reader.has_frame():
                        break
                    # One frame at a time, with no timeout: py-amqp's drain_events()
                    # would wait for a whole message, and after a heartbeat frame for
                    # the next frame, holding the lock; a timeout costs two system
                    # calls per frame to set and clear. select() said bytes are
                    # there (or the buffer has a frame); SO_RCVTIMEO bounds the wait
                    # for the rest of a frame.
                    frame = reader.read_frame()
                    if not (
                        frame[0] == 1
                        and frame[2][:4] == wire.DELIVER
                        and self._deliver(raw, reader, frame)
                    ):
                        raw.on_inbound_frame(frame)
                    if enough is not None and enough():
                        break
                    if not reader.has_frame():
                        readable = _readable(sock, None, 0)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # A borrower interrupted (KeyboardInterrupt in a main thread)
                    # may stop between the frames of one message, which py-amqp
                    # then half holds: the next reader would start inside it.
                    # Make the link again.
                    self._connected.clear()
                    self._wake()
                raise
            self._heartbeat_tick()
        finally:
            self._lock.release()

    def _deliver(
        self, raw: Any, reader: wire.FrameReader, method: tuple[int, int, bytes]
    ) -> bool:
        """Read a delivery to one of our consumers and hand it over; callers hold the
        lock and the read token. False, having read nothing more, for anyone else's.

        py-amqp would build a message, dispatch it by method and hand it to a Kombu
        callback that :func:`_to_delivery` then turns into ours: a third of a
        worker's reading time. The rest of the message (its content header and
        body) is read here at once, when it is all buffered and nothing else lies in
        between; otherwise (frames of other channels in between, which RabbitMQ
        does not send but AMQP allows, or bytes still on their way) py-amqp reads it.
        """
        _, channel_id, payload = method
        tag, delivery_tag, redelivered, exchange, routing_key = wire.decode_deliver(
            payload
        )
        consumer = self._consumers.get((channel_id, tag))
        if consumer is None or not reader.has_content(channel_id):
            # Not ours, or not all here yet: py-amqp reads it frame by frame
            # rather than this thread waiting for the rest under the lock.
            return False
        raw.bytes_recv += 1  # heartbeats count reads
        # has_content() saw the header and body frames next, all on this channel.
        body_size, properties = wire.decode_content_header(reader.read_frame()[2])
        chunks = []
        received = 0
        while received < body_size:
            chunk = reader.read_frame()[2]
            chunks.append(chunk)
            received += len(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        callback, generation = consumer
        try:
            headers = properties.get("application_headers")
            callback(
                Delivery(
                    body=body,
                    content_type=properties.get("content_type"),
                    headers=headers if headers else {},
                    correlation_id=properties.get("correlation_id"),
                    reply_to=properties.get("reply_to"),
                    delivery_tag=delivery_tag,
                    redelivered=redelivered,
                    routing_key=routing_key,
                    exchange=exchange,
                    consumer_tag=tag,
                    generation=generation,
                    properties=properties,
                )
            )
        except Exception:
            # A bad message must never take the connection down with it.
            log.exception("%s: consumer callback failed", self.name)
        return True

    def _heartbeat_tick(self) -> None:
        # py-amqp wants its heartbeat tick about once a second, not every turn.
        # Callers hold the lock.
        if not self._heartbeat or self._connection is None:
            return
        now = time.monotonic()
        if now >= self._next_heartbeat_check:
            self._next_heartbeat_check = now + self._tick_interval()
            self._connection.heartbeat_check(rate=2)

    def _lost(self, exc: BaseException) -> None:
        self._connected.clear()
        self._wake()  # a thread that borrowed the reading stops and gives it back
        with self._read_token, self._lock:
            self._close_connection()
        log.warning(RECONNECTING, self.name, exc)
        if self._on_disconnect is not None:
            try:
                self._on_disconnect(exc)
            except Exception:
                log.exception("%s: disconnect handler failed", self.name)
        if not self._reconnect:
            self._stopping.set()
            return
        backoff = FIRST_BACKOFF
        while not self._stopping.is_set():
            try:
                self._connect()
                log.info(RECONNECTED, self.name, self._safe_url())
                return
            except BrokerError as error:
                log.debug("%s: reconnect failed: %s", self.name, error)
            self._stopping.wait(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, MAX_BACKOFF)


def _skip_poll_before_publish(connection: KombuConnection) -> None:
    # py-amqp reads the socket before every publish to catch connection.blocked; our
    # I/O thread reads every frame anyway, so that poll (a syscall and a raised
    # timeout per publish) is pure cost. The broker still sends connection.blocked:
    # it was negotiated at the handshake, and only this local copy changes.
    raw = connection.connection
    properties = getattr(raw, "client_properties", None)
    if isinstance(properties, dict):
        capabilities = dict(properties.get("capabilities", {}))
        capabilities["connection.blocked"] = False
        raw.client_properties = {**properties, "capabilities": capabilities}


def _bound_reads(transport: Any) -> None:
    """Make a read that waits :data:`READ_TIMEOUT` for bytes raise TimeoutError.

    SO_RCVTIMEO alone does not: on plain TCP the kernel reports it as EAGAIN, which
    py-amqp retries in the middle of a frame, and Python's TLS layer retries it in
    any case. A frame cut midway was then waited for forever, under the lock, where
    neither heartbeats nor ``stop()`` could get at the connection. TLS gets a socket
    timeout of Python's (a poll() before each read); plain TCP keeps its reads bare.
    """
    sock = getattr(transport, "sock", None)
    recv = getattr(transport, "_quick_recv", None)
    if not isinstance(sock, socket.socket) or recv is None:
        return
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(READ_TIMEOUT)
        return

    def bounded(*args: Any) -> Any:
        try:
            return recv(*args)
        except BlockingIOError as exc:
            raise TimeoutError(f"no bytes for {READ_TIMEOUT}s") from exc

    transport._quick_recv = bounded


def _packed_connection(channel: Any) -> Any:
    """The py-amqp connection to write ``channel``'s packed frames to, if it may."""
    if _is_virtual(channel):
        return None
    raw = getattr(channel, "connection", None)  # None once the channel is closed
    if raw is None or getattr(raw, "_transport", None) is None:
        return None
    return raw


def _publish_packed(
    channel: Any,
    body: bytes,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    properties: dict[str, Any],
) -> bool:
    """Publish with frames packed here (:mod:`rpc.wire`); False to leave it to py-amqp.

    The caller holds the lock, as for any write; ``_one_write`` still gathers these.
    """
    raw = _packed_connection(channel)
    if raw is None:
        return False
    frames = wire.publish_frames(
        channel.channel_id,
        raw.frame_max,
        exchange,
        routing_key,
        mandatory,
        body,
        properties,
    )
    if frames is None:
        return False
    raw._transport.write(frames)
    raw.bytes_sent += 1  # heartbeats count writes
    return True


def _ack_packed(channel: Any, delivery_tag: int | str) -> bool:
    raw = _packed_connection(channel)
    if raw is None or not isinstance(delivery_tag, int):
        return False
    raw._transport.write(wire.ack_frame(channel.channel_id, delivery_tag))
    raw.bytes_sent += 1
    return True


def _buffer_reads(transport: Any) -> wire.FrameReader | None:
    """Have py-amqp read frames through one buffer, many per ``recv()``."""
    if transport is None or getattr(transport, "_quick_recv", None) is None:
        return None
    reader = wire.FrameReader(transport)
    transport.read_frame = reader.read_frame
    return reader


def _drain_virtual(connection: KombuConnection) -> bool:
    """Deliver what is waiting, up to a batch; True when more may be waiting."""
    for _ in range(FRAMES_PER_LOCK):
        try:
            connection.drain_events(timeout=0)
        except TimeoutError:  # socket.timeout: nothing waiting
            return False
    return True


def _raw(connection: KombuConnection) -> Any:
    """The py-amqp connection under a Kombu one, or None once it is gone.

    Never Kombu's ``connection`` property: on a dead link it silently dials a new
    connection, which would block under our lock and skip ``on_connect``.
    """
    return getattr(connection, "_connection", None)


def _readable(
    sock: socket.socket,
    wake: socket.socket | None,
    timeout: float,
    reader: wire.FrameReader | None = None,
) -> list[socket.socket]:
    sockets = [sock] if wake is None else [sock, wake]
    buffered = _has_buffered(sock)
    # select() cannot see what TLS already decrypted, nor the frames our reader
    # holds: a borrower that stopped after its own frame may have left them there.
    # The reader's frames only shorten the wait: looked at without the lock, they
    # may be gone by the time it is taken, and _drain looks again under it.
    held = reader is not None and reader.has_frame()
    ready, _, _ = select.select(sockets, [], [], 0 if buffered or held else timeout)
    if buffered and sock not in ready:
        ready.append(sock)
    return ready


def _has_buffered(sock: socket.socket) -> bool:
    # TLS keeps decrypted bytes that select() cannot see.
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
