"""BrokerConnection: one broker connection shared by every thread of its owner.

py-amqp connections are not thread-safe. A :class:`BrokerConnection` owns one Kombu
connection and one channel (its :class:`~rpc.transport.link.Link`); its I/O thread
waits on the socket and reads frames, and any thread may publish or acknowledge by
taking the connection's lock. Publishers never hand work to another thread, which
keeps a call's latency to one socket write. Who reads is the
:class:`~rpc.transport.reading.ReadingRole`'s business: a waiting thread, or an event
loop with calls in flight, reads its own replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from rpc.errors import BrokerError
from rpc.tls import TlsSettings
from rpc.transport.confirms import Confirms
from rpc.transport.delivery import Delivery, DeliveryCallback
from rpc.transport.dispatching import Dispatcher
from rpc.transport.drivers import ONE_WRITE_MAX
from rpc.transport.link import NODE_CONNECT_TIMEOUT, Link
from rpc.transport.loop_reading import LoopReader
from rpc.transport.reading import ReadingRole
from rpc.wire import DEFAULT_HEADER_LIMITS, HeaderLimits


class QueueRefusedError(BrokerError):
    """The broker refused to declare one queue; the connection is still up.

    RabbitMQ answers a declare with a channel error when, for instance, a classic
    queue's home node is down (404) or the queue exists with other arguments (406).
    """


class BrokerConnection:
    """One broker connection, kept alive and shared by every thread of its owner.

    ``on_connect(channel)`` runs under the lock after every (re)connection and must
    declare what the owner needs and start its consumers. ``on_disconnect(exc)`` runs
    when the connection is lost, before reconnection starts, so the owner can fail
    what was in flight. ``on_tick()`` runs on the I/O thread about once a second.

    ``tls`` (:func:`rpc.tls.tls_settings`) is for ``amqps://`` URLs, and
    ``login_method`` says how to log in (PLAIN by default; EXTERNAL with a client
    certificate). ``header_limits`` bound what the headers of one delivery may make
    this side read: a delivery over them arrives ``malformed``.

    ``exit_on_reader_death`` is for a worker process: should the I/O thread ever
    die, it logs a CRITICAL line and exits the process with status 70 so that its
    supervisor starts it again, rather than stay alive but deaf. A client leaves it
    off: its connection then stops, and its calls fail with BrokerError.

    ``url`` may list several nodes of a cluster, ``;``-separated: each connection
    goes to one, starting at a random one, each attempt bounded by ``node_timeout``
    seconds, and a reconnection starts with the node after the one it lost.
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
        exit_on_reader_death: bool = False,
        node_timeout: float = NODE_CONNECT_TIMEOUT,
        listed_order: bool = False,
        tls: TlsSettings | None = None,
        login_method: str | None = None,
        header_limits: HeaderLimits = DEFAULT_HEADER_LIMITS,
    ) -> None:
        self.url = url
        self.name = name
        self._confirms = Confirms() if confirms else None
        self._dispatcher = Dispatcher(name, self._down, header_limits)
        self._link = link = Link(
            url,
            name=name,
            tls=tls,
            login_method=login_method,
            heartbeat=heartbeat,
            connect_timeout=connect_timeout,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            on_tick=on_tick,
            reconnect=reconnect,
            confirms=self._confirms,
            dispatcher=self._dispatcher,
            exit_on_death=exit_on_reader_death,
            node_timeout=node_timeout,
            listed_order=listed_order,
        )
        self._reading = link.reading = ReadingRole(link, self._dispatcher)
        self._lock = link.lock
        self._loop_readers: dict[asyncio.AbstractEventLoop, LoopReader] = {}
        #: (generation, channel) of the channel :meth:`declare_queue` uses.
        self._side: tuple[int, Any] | None = None

    def _down(self) -> bool:
        return self._link.stopping.is_set() or not self._link.connected.is_set()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect (retrying until ``connect_timeout``) and start the I/O thread."""
        self._link.start()

    def stop(self) -> None:
        """Close the connection and end the I/O thread; safe to call twice."""
        self._link.stop()

    @property
    def stopped(self) -> bool:
        return self._link.stopping.is_set()

    @property
    def connected(self) -> bool:
        return self._link.connected.is_set()

    @property
    def node(self) -> str:
        """The URL of the node in use (or last tried), its password masked."""
        return self._link.safe_url()

    @property
    def generation(self) -> int:
        """Increases on every successful connection."""
        return self._link.generation

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected, or ``timeout`` seconds; True if connected."""
        return self._link.connected.wait(max(timeout, 0))

    @property
    def supports_direct_reply_to(self) -> bool:
        """True on RabbitMQ; Kombu's virtual transports need a reply queue."""
        driver = self._link.driver
        return driver is not None and driver.direct_reply_to

    @property
    def has_socket(self) -> bool:
        driver = self._link.driver
        return driver is not None and driver.sock is not None

    # -- operations for any thread -------------------------------------------------

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        """Hold the lock and use the live channel; BrokerError if there is none."""
        link = self._link
        with self._lock:
            channel = link.live_channel()
            try:
                yield channel
            except link.errors() as exc:
                raise link.failed(exc) from exc
            finally:
                # A synchronous method (a declare, basic.get) read its answer
                # through the buffer: frames after it left the socket, and a reader
                # waiting in select() would not see them until its timeout.
                driver = link.driver
                reader = driver.reader if driver is not None else None
                if reader is not None and reader.has_frame():
                    link.interrupt()

    def declare_queue(self, queue: str, *, arguments: Mapping[str, Any]) -> None:
        """Declare a durable queue on a channel of its own, not the consumers'.

        A refusal closes that side channel only: QueueRefusedError, and the
        consumers, their unacknowledged deliveries and the connection stay as they
        are (a refusal on the main channel would take them all down). BrokerError
        when the connection itself fails.
        """
        link = self._link
        with self._lock:
            link.live_channel()
            connection = link.connection
            assert connection is not None
            side = self._side
            try:
                if side is None or side[0] != link.generation or not _is_open(side[1]):
                    side = self._side = (link.generation, connection.channel())
                side[1].queue_declare(
                    queue=queue,
                    durable=True,
                    auto_delete=False,
                    exclusive=False,
                    arguments=dict(arguments),
                )
            except tuple(connection.channel_errors) as exc:
                # py-amqp opens the closed channel again by itself (or marks it
                # closed, and the next declare opens another).
                raise QueueRefusedError(f"queue {queue} refused: {exc}") from exc
            except link.errors() as exc:
                raise link.failed(exc) from exc
            finally:
                driver = link.driver
                reader = driver.reader if driver is not None else None
                if reader is not None and reader.has_frame():
                    link.interrupt()

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
        """Publish one message on the shared channel.

        SerializationError, with nothing sent, when its properties or headers
        cannot be encoded; BrokerError when the connection fails.
        """
        link = self._link
        message = _message(content_type, content_encoding, headers, properties)
        # The lock is taken directly, not through channel(): this is the hot path,
        # and a generator-based context manager costs several times a lock.
        with self._lock:
            channel = link.live_channel()
            driver = link.driver
            assert driver is not None
            try:
                driver.publish(channel, body, exchange, routing_key, mandatory, message)
            except link.errors() as exc:
                raise link.failed(exc) from exc

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
        driver = self._link.driver
        if driver is None:
            raise BrokerError(f"not connected to the broker ({self.name})")
        message = _message(content_type, "utf-8", headers, properties)
        driver.publish(channel, body, exchange, routing_key, mandatory, message)

    def publish_and_ack(
        self, delivery: Delivery, body: bytes | None, **publish: Any
    ) -> None:
        """Publish a reply (if any) then acknowledge ``delivery``, in one lock hold.

        Order matters: a crash between the two redelivers the request rather than
        losing it. An ack for a delivery from an earlier connection is skipped: the
        broker has already requeued that message. A small reply leaves in one
        socket write with the ack.
        """
        link = self._link
        with self._lock:
            channel = link.live_channel()
            driver = link.driver
            assert driver is not None
            try:
                if body is None:
                    if delivery.generation == link.generation:
                        driver.ack(channel, delivery.delivery_tag)
                    return
                with (
                    driver.one_write()
                    if len(body) <= ONE_WRITE_MAX
                    else contextlib.nullcontext()
                ):
                    driver.publish(
                        channel,
                        body,
                        publish["exchange"],
                        publish["routing_key"],
                        publish.get("mandatory", False),
                        _message(
                            publish["content_type"],
                            publish.get("content_encoding", "utf-8"),
                            publish.get("headers"),
                            publish.get("properties", {}),
                        ),
                    )
                    if delivery.generation == link.generation:
                        driver.ack(channel, delivery.delivery_tag)
            except link.errors() as exc:
                raise link.failed(exc) from exc

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
        message = _message(content_type, content_encoding, headers, properties)
        link = self._link
        with self.channel() as channel:
            driver = link.driver
            assert driver is not None
            confirms, confirm_channel = self._confirms, link.confirm_channel
            if confirms is None or confirm_channel is None:
                # No confirms on this transport (Kombu's memory://): taken is taken,
                # and a mandatory message nothing routes is known at once.
                routed = driver.publish(
                    channel, body, exchange, routing_key, mandatory, message
                )
                future.set_result(routed or not mandatory)
                return future
            tag = confirms.expect(future, message_id)
            try:
                driver.publish(
                    confirm_channel, body, exchange, routing_key, mandatory, message
                )
            except BaseException:
                confirms.forget(tag)
                raise
        return future

    def read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read frames on this thread until ``done()`` or ``timeout`` seconds pass.

        For a thread that would otherwise block until a frame arrives: it becomes
        the reader while the I/O thread steps aside, and every callback runs here.
        Returns False at once, having read nothing, when it cannot borrow the
        reading (another thread has it, the transport has no socket, this is the
        I/O thread): the caller then waits as it would have anyway.
        """
        return self._reading.read_until(done, timeout)

    def interrupt_reader(self) -> None:
        """Have a thread in :meth:`read_until` look at its ``done()`` again now."""
        self._link.interrupt()

    def loop_reader(self, loop: asyncio.AbstractEventLoop) -> LoopReader:
        """``loop``'s share of the reading: ``enter()`` while a call of it awaits its
        reply, ``leave()`` after. While one does, the loop reads the socket itself
        (when nobody else has borrowed it and there is a socket) and callbacks run
        on the loop's thread. Use from ``loop``'s thread only.
        """
        readers = self._loop_readers
        reader = readers.get(loop)
        if reader is None:
            # Loops of other threads may add theirs meanwhile: iterate a copy.
            for closed in [each for each in list(readers) if each.is_closed()]:
                readers.pop(closed, None)
            reader = readers[loop] = LoopReader(self._reading, loop)
        return reader

    def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer without waiting for the broker's answer.

        The broker may be gone without a word (a dead link not yet found by
        heartbeats); waiting for ``basic.cancel-ok`` under the lock would then block
        every thread of the owner.

        Deliveries the broker sent before it saw the cancel still reach the
        consumer's callback (which hands them back): read by py-amqp instead, one
        it cannot decode would take the connection down.
        """
        with self.channel() as channel:
            driver = self._link.driver
            assert driver is not None
            driver.cancel(channel, consumer_tag)

    def ack(self, delivery: Delivery) -> None:
        self.publish_and_ack(delivery, None)

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Give a delivery back (``requeue``) or drop it; a no-op after reconnecting."""
        with self.channel() as channel:
            if delivery.generation == self._link.generation:
                driver = self._link.driver
                assert driver is not None
                driver.reject(channel, delivery.delivery_tag, requeue)

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
        link = self._link
        generation = link.generation
        on_message = self._dispatcher.kombu_callback(callback, generation, consumer_tag)
        tag: str = channel.basic_consume(
            queue=queue, no_ack=no_ack, callback=on_message, consumer_tag=consumer_tag
        )
        tag = tag or consumer_tag
        driver = link.driver
        if driver is not None and driver.direct_delivery:
            self._dispatcher.add(channel.channel_id, tag, callback, generation)
        return tag

    def on_return(self, channel: Any, callback: DeliveryCallback) -> None:
        """Have ``callback`` see mandatory messages the broker could not route."""
        driver = self._link.driver
        if driver is not None:
            driver.on_return(channel, callback, self._link.generation)


def _message(
    content_type: str,
    content_encoding: str,
    headers: Mapping[str, Any] | None,
    properties: Mapping[str, Any],
) -> dict[str, Any]:
    """A message's AMQP properties, as the drivers take them."""
    return {
        "content_type": content_type,
        "content_encoding": content_encoding,
        "application_headers": headers or None,
        **properties,
    }


def _is_open(channel: Any) -> bool:
    """Whether a channel may still be used (py-amqp and Kombu's memory channels)."""
    return bool(getattr(channel, "is_open", True))
