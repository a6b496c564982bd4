"""Frames to consumers: the consumer table, deliveries decoded straight off the wire.

Deliveries to our consumers are never decoded by py-amqp, which raises on values
a broker passes on as they came (a timestamp past year 9999, a table nested a
thousand deep, a short string that is not UTF-8): such a message would stop the
thread reading the connection, on every worker it reaches. Whatever reads a frame
(the I/O thread, a borrower, an event loop, or py-amqp waiting for the answer to a
declaration) hands it here first, and what cannot be read becomes a
:class:`Delivery` that says why (``malformed``), never an exception.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Callable
from typing import Any

from amqp.exceptions import UnexpectedFrame

from rpc import wire
from rpc.errors import BrokerError
from rpc.transport.delivery import (
    Delivery,
    DeliveryCallback,
    from_message,
    malformed_message,
)

log = logging.getLogger("rpc.transport")

CALLBACK_FAILED = "%s: consumer callback failed"
#: Deliveries taken while py-amqp waits for one answer before the link is given up.
MAX_FRAMES_IN_A_WAIT = 100_000
MALFORMED = "%s: a delivery to %s cannot be read: %s"

_HEADER_FRAME = 2
_BODY_FRAME = 3
#: A content header's class, weight and body size: what a header too short for
#: its properties still says.
_HEADER_START = struct.Struct(">HHQ")

#: (consumer tag, delivery tag, redelivered, exchange, routing key) of a delivery.
_Method = tuple[str, int, bool, str, str]


@dataclasses.dataclass(slots=True)
class _Partial:
    """A delivery whose method frame was read, and its content not all yet."""

    callback: DeliveryCallback
    generation: int
    method: _Method
    #: The content header's payload, once it came.
    header: bytes | None = None
    body_size: int = 0
    chunks: list[bytes] = dataclasses.field(default_factory=list)
    received: int = 0


class Dispatcher:
    """Hands each delivery to its consumer's callback, whichever thread reads it.

    ``down()`` says whether the connection is stopping or lost: a callback failing
    then with BrokerError (its ack or reply cannot go out) is expected, not a bug.
    Callers of :meth:`deliver` and :meth:`take` hold the lock and the read token.
    """

    def __init__(
        self,
        name: str,
        down: Callable[[], bool],
        header_limits: wire.HeaderLimits = wire.DEFAULT_HEADER_LIMITS,
    ) -> None:
        self._name = name
        self._down = down
        self._header_limits = header_limits
        #: Our consumers by channel id and consumer tag, with the connection
        #: generation they started on: deliveries to them skip py-amqp's dispatch.
        self.consumers: dict[tuple[int, str], tuple[DeliveryCallback, int]] = {}
        #: Deliveries to our consumers cut across reads, by channel: their header
        #: and body frames come here as they arrive. Empty but for a message split
        #: between two reads, so the common case pays one look at an empty dict.
        self.partial: dict[int, _Partial] = {}

    def add(
        self,
        channel_id: int,
        consumer_tag: str,
        callback: DeliveryCallback,
        generation: int,
    ) -> None:
        self.consumers[(channel_id, consumer_tag)] = (callback, generation)

    def clear(self) -> None:
        """The connection is gone: its consumers, and any message half read."""
        self.consumers = {}
        self.partial.clear()

    def kombu_callback(
        self, callback: DeliveryCallback, generation: int, consumer_tag: str
    ) -> Callable[[Any], None]:
        """The callback Kombu calls with its message, for deliveries it reads itself."""

        def on_message(message: Any) -> None:
            try:
                try:
                    delivery = from_message(message, generation)
                except Exception as exc:
                    # Properties of a kind we never expected (Kombu's memory
                    # transport passes on whatever was published).
                    delivery = malformed_message(message, generation, exc)
                if not delivery.consumer_tag and consumer_tag:
                    # Kombu's virtual transports leave it out of delivery_info.
                    delivery = dataclasses.replace(delivery, consumer_tag=consumer_tag)
                callback(delivery)
            except Exception as exc:
                # A bad message must never take the connection down with it.
                self.callback_failed(exc)

        return on_message

    def callback_failed(self, exc: Exception) -> None:
        if isinstance(exc, BrokerError) and self._down():
            # Stopping or disconnected: the ack or reply it tried cannot go out,
            # and the broker redelivers the message. Not worth a traceback.
            log.debug("%s: consumer callback stopped: %s", self._name, exc)
        else:
            log.exception(CALLBACK_FAILED, self._name)

    def deliver(self, reader: wire.FrameReader, method: tuple[int, int, bytes]) -> bool:
        """Take a basic.deliver method frame to one of our consumers; False, having
        read nothing more, for anyone else's.

        py-amqp would build a message, dispatch it by method and hand it to a Kombu
        callback that :func:`from_message` then turns into ours: a third of a
        worker's reading time. The rest of the message (its content header and
        body) is read here at once when it is all buffered with nothing in between;
        otherwise the delivery is remembered and its frames taken by :meth:`take` as
        they come, rather than this thread wait for them under the lock.
        """
        _, channel_id, payload = method
        decoded = wire.decode_deliver(payload)
        consumer = self.consumers.get((channel_id, decoded[0]))
        if consumer is None:
            return False
        callback, generation = consumer
        if not reader.has_content(channel_id):
            self.partial[channel_id] = _Partial(callback, generation, decoded)
            return True
        # has_content() saw the header and body frames next, all on this channel.
        header = reader.read_frame()[2]
        body_size = _HEADER_START.unpack_from(header)[2]
        chunks = []
        received = 0
        while received < body_size:
            chunk = reader.read_frame()[2]
            chunks.append(chunk)
            received += len(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._hand_over(callback, generation, decoded, header, body)
        return True

    def take(self, frame: tuple[int, int, bytes]) -> bool:
        """Take a frame of a delivery :meth:`deliver` left half read; False if it
        belongs to none. A frame out of place there breaks the stream, as it would
        in py-amqp: UnexpectedFrame, and the link is made again."""
        kind, channel_id, payload = frame
        partial = self.partial.get(channel_id)
        if partial is None:
            return False
        if partial.header is None:
            if kind != _HEADER_FRAME or len(payload) < _HEADER_START.size:
                del self.partial[channel_id]
                raise UnexpectedFrame(
                    f"frame of type {kind} on channel {channel_id} where a "
                    "delivery's content header was expected"
                )
            partial.header = payload
            partial.body_size = _HEADER_START.unpack_from(payload)[2]
        elif kind == _BODY_FRAME:
            partial.chunks.append(payload)
            partial.received += len(payload)
        else:
            del self.partial[channel_id]
            raise UnexpectedFrame(
                f"frame of type {kind} on channel {channel_id} inside the body "
                "of a delivery"
            )
        if partial.received >= partial.body_size:
            del self.partial[channel_id]
            self._hand_over(
                partial.callback,
                partial.generation,
                partial.method,
                partial.header,
                b"".join(partial.chunks),
            )
        return True

    def _hand_over(
        self,
        callback: DeliveryCallback,
        generation: int,
        method: _Method,
        header: bytes,
        body: bytes,
    ) -> None:
        tag, delivery_tag, redelivered, exchange, routing_key = method
        try:
            try:
                properties = wire.decode_content_header(header, self._header_limits)[1]
            except wire.MalformedFrame as exc:
                log.warning(MALFORMED, self._name, tag, exc)
                delivery = Delivery(
                    body=body,
                    content_type=None,
                    headers={},
                    correlation_id=None,
                    reply_to=None,
                    delivery_tag=delivery_tag,
                    redelivered=redelivered,
                    routing_key=routing_key,
                    exchange=exchange,
                    consumer_tag=tag,
                    generation=generation,
                    properties={},
                    malformed=str(exc) or "unreadable content header",
                    raw_properties=header,
                )
            else:
                headers = properties.get("application_headers")
                delivery = Delivery(
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
            callback(delivery)
        except Exception as exc:
            # A bad message must never take the connection down with it.
            self.callback_failed(exc)

    def frames_for_py_amqp(
        self, reader: wire.FrameReader, count_read: Callable[[], None]
    ) -> Callable[[], tuple[int, int, bytes]]:
        """py-amqp's ``read_frame`` while it waits for the answer to a synchronous
        method (a declaration, a consume): deliveries to our consumers that arrive
        meanwhile come here, not to py-amqp's decoder; it gets every other frame."""
        read_frame = reader.read_frame
        deliver_method = wire.DELIVER
        partial = self.partial

        def read() -> tuple[int, int, bytes]:
            # While py-amqp waits, nobody acks: the broker sends at most a
            # prefetch's worth of deliveries (and no_ack ones), never this many.
            for _ in range(MAX_FRAMES_IN_A_WAIT):
                frame = read_frame()
                if (partial and self.take(frame)) or (
                    frame[0] == 1
                    and frame[2][:4] == deliver_method
                    and self.deliver(reader, frame)
                ):
                    count_read()
                    continue
                return frame
            raise BrokerError(
                f"{self._name}: {MAX_FRAMES_IN_A_WAIT} deliveries and no answer "
                "to a synchronous method"
            )

        return read
