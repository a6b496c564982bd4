"""Frames to consumers: the consumer table, deliveries decoded straight off the wire."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from rpc import wire
from rpc.errors import BrokerError
from rpc.transport.delivery import Delivery, DeliveryCallback, from_message

log = logging.getLogger("rpc.transport")

CALLBACK_FAILED = "%s: consumer callback failed"


class Dispatcher:
    """Hands each delivery to its consumer's callback, whichever thread reads it.

    ``down()`` says whether the connection is stopping or lost: a callback failing
    then with BrokerError (its ack or reply cannot go out) is expected, not a bug.
    """

    def __init__(self, name: str, down: Callable[[], bool]) -> None:
        self._name = name
        self._down = down
        #: Our consumers by channel id and consumer tag, with the connection
        #: generation they started on: deliveries to them skip py-amqp's dispatch.
        self.consumers: dict[tuple[int, str], tuple[DeliveryCallback, int]] = {}

    def add(
        self,
        channel_id: int,
        consumer_tag: str,
        callback: DeliveryCallback,
        generation: int,
    ) -> None:
        self.consumers[(channel_id, consumer_tag)] = (callback, generation)

    def remove(self, channel_id: int, consumer_tag: str) -> None:
        self.consumers.pop((channel_id, consumer_tag), None)

    def clear(self) -> None:
        self.consumers = {}

    def kombu_callback(
        self, callback: DeliveryCallback, generation: int, consumer_tag: str
    ) -> Callable[[Any], None]:
        """The callback Kombu calls with its message, for deliveries it reads itself."""

        def on_message(message: Any) -> None:
            try:
                delivery = from_message(message, generation)
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

    def deliver(
        self, raw: Any, reader: wire.FrameReader, method: tuple[int, int, bytes]
    ) -> bool:
        """Read a delivery to one of our consumers and hand it over; callers hold the
        lock and the read token. False, having read nothing more, for anyone else's.

        py-amqp would build a message, dispatch it by method and hand it to a Kombu
        callback that :func:`from_message` then turns into ours: a third of a
        worker's reading time. The rest of the message (its content header and
        body) is read here at once, when it is all buffered and nothing else lies in
        between; otherwise (frames of other channels in between, which RabbitMQ
        does not send but AMQP allows, or bytes still on their way) py-amqp reads it.
        """
        _, channel_id, payload = method
        tag, delivery_tag, redelivered, exchange, routing_key = wire.decode_deliver(
            payload
        )
        consumer = self.consumers.get((channel_id, tag))
        if consumer is None or not reader.has_content(channel_id):
            # Not ours, or not all here yet: py-amqp reads it frame by frame
            # rather than this thread waiting for the rest under the lock.
            return False
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
        except Exception as exc:
            # A bad message must never take the connection down with it.
            self.callback_failed(exc)
        return True
