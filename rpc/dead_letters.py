"""The operator's look into a dead-letter queue: list its messages, or requeue them.

``rpc dead-letters SERVICE`` runs :func:`look`; the policy that put them there is
:mod:`rpc.deadletter`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from amqp.exceptions import NotFound
from kombu.exceptions import ChannelError as KombuChannelError

from rpc import protocol
from rpc.config import Config
from rpc.errors import UnknownServiceError
from rpc.tls import connection_options
from rpc.transport import BrokerConnection


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A message found in a dead-letter queue."""

    body: bytes
    headers: Mapping[str, Any]
    content_type: str | None
    #: Sent back to its queue by :func:`inspect` with ``requeue``.
    requeued: bool = False

    @property
    def reason(self) -> str:
        """Our reason, or the broker's (quorum queues dead-letter by themselves)."""
        reason = self.headers.get(protocol.HEADER_DEATH_REASON)
        if reason is None:
            reason = self.headers.get(protocol.HEADER_FIRST_DEATH_REASON, "unknown")
        return str(reason)

    @property
    def detail(self) -> str:
        return str(self.headers.get(protocol.HEADER_DEATH_DETAIL, ""))

    @property
    def queue(self) -> str:
        """The queue it was taken from, when its headers say."""
        queue = self.headers.get(protocol.HEADER_ORIGIN_QUEUE)
        if queue is None:
            queue = self.headers.get(protocol.HEADER_FIRST_DEATH_QUEUE, "")
        return str(queue)

    @property
    def event_type(self) -> str:
        """The event's type, for an event handler's dead letter."""
        return str(self.headers.get(protocol.HEADER_EVENT_TYPE, ""))

    @property
    def method(self) -> str:
        """The method called, or the event handler whose queue it came from."""
        method = self.headers.get(protocol.HEADER_METHOD)
        if isinstance(method, str):
            return method
        handler = protocol.event_queue_handler(self.queue)
        return handler[1] if handler is not None else ""


#: Headers a requeued dead letter sheds: it starts over as a fresh message.
DEATH_HEADERS = (
    protocol.HEADER_DEATH_REASON,
    protocol.HEADER_DEATH_DETAIL,
    protocol.HEADER_DELIVERY_COUNT,
    protocol.HEADER_BROKER_DELIVERY_COUNT,
    protocol.HEADER_ORIGIN_QUEUE,
    protocol.HEADER_FIRST_DEATH_REASON,
    protocol.HEADER_FIRST_DEATH_QUEUE,
    "x-first-death-exchange",
    "x-death",
)


def requeue_route(service: str, letter: DeadLetter) -> tuple[str, str]:
    """The (exchange, routing key) a requeue publishes ``letter`` with.

    A sharded request goes back through the shard exchange, to whichever worker
    owns its key now (its own queue went with the worker that took it); anything
    else straight to :func:`requeue_queue`.
    """
    shard_key = letter.headers.get(protocol.HEADER_SHARD_KEY)
    if isinstance(shard_key, str) and shard_key and letter.method:
        return protocol.RPC_EXCHANGE, protocol.shard_routing_key(service, letter.method)
    return "", requeue_queue(service, letter)


def requeue_queue(service: str, letter: DeadLetter) -> str:
    """Where a requeue sends ``letter``: its own queue, if ``service`` consumes it.

    Anything else (an old message, one published by hand) goes to the service queue.
    """
    queue = letter.queue
    if queue and protocol.owns_queue(service, queue):
        return queue
    return protocol.service_queue(service)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What :func:`look` found: some of a dead-letter queue's messages, and how
    many the queue held when it looked."""

    letters: list[DeadLetter]
    #: Messages in the queue when it was looked at: more than ``letters`` when
    #: ``limit`` cut the listing short.
    waiting: int


def inspect(
    config: Config, service: str, *, limit: int = 100, requeue: bool = False
) -> list[DeadLetter]:
    """Up to ``limit`` messages of ``service``'s dead-letter queue: :func:`look`."""
    return look(config, service, limit=limit, requeue=requeue).letters


def look(
    config: Config,
    service: str,
    *,
    limit: int = 100,
    requeue: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Listing:
    """Up to ``limit`` messages of ``service``'s dead-letter queue, and its depth.

    They stay in the queue, unless ``requeue``: then each is published back to the
    queue it came from (:func:`requeue_route`) as a fresh message (its count and
    death headers removed), and only once the broker confirms that a queue took it
    is it removed from the dead-letter queue. A failure in between duplicates a
    message rather than losing it, and one whose queue is gone (the broadcast queue
    of a worker that stopped) stays, with ``requeued`` false.

    ``progress(done, total)`` hears of each message taken. A service whose
    dead-letter queue does not exist (no worker of it ever ran on this broker)
    raises UnknownServiceError.
    """
    queue = protocol.dead_letter_queue(protocol.check_service_name(service))
    connection = BrokerConnection(
        config.broker_url,
        name="dead-letters",
        heartbeat=0,
        connect_timeout=config.connect_timeout,
        on_connect=lambda channel: None,
        reconnect=False,
        **connection_options(config),
    )
    connection.start()
    found: list[DeadLetter] = []
    waiting = 0
    try:
        with connection.channel() as channel:
            # Only what is there now: a requeued message that fails again comes back.
            try:
                _, waiting, _ = channel.queue_declare(queue=queue, passive=True)
            except (NotFound, KombuChannelError) as exc:
                if "NOT_FOUND" not in str(exc) and not isinstance(exc, NotFound):
                    raise
                raise UnknownServiceError(
                    f"no dead-letter queue {queue!r} on this broker: no worker of "
                    f"{service!r} has ever run here (is the name or the vhost wrong?)"
                ) from None
            returned: list[object] = []
            # A mandatory publish that no queue takes comes back before its confirm.
            channel.events["basic_return"].add(lambda *args: returned.append(args))
            total = min(limit, waiting)
            while len(found) < total:
                message = channel.basic_get(queue=queue, no_ack=False)
                if message is None:
                    break
                body = message.body
                letter = DeadLetter(
                    body=body.encode() if isinstance(body, str) else bytes(body),
                    headers=dict(message.properties.get("application_headers") or {}),
                    content_type=message.properties.get("content_type"),
                )
                if requeue:
                    returned.clear()
                    _republish(channel, service, letter, message.properties)
                    if not returned:
                        channel.basic_ack(message.delivery_info["delivery_tag"])
                        letter = dataclasses.replace(letter, requeued=True)
                found.append(letter)
                if progress is not None:
                    progress(len(found), total)
            # Hand back everything we looked at and kept, in its order.
            channel.basic_recover(requeue=True)
    finally:
        with contextlib.suppress(Exception):
            connection.stop()
    return Listing(found, waiting)


def _republish(
    channel: Any, service: str, letter: DeadLetter, properties: Mapping[str, Any]
) -> None:
    headers = {k: v for k, v in letter.headers.items() if k not in DEATH_HEADERS}
    kept = {
        name: properties[name]
        for name in ("correlation_id", "reply_to", "delivery_mode", "message_id")
        if properties.get(name) is not None
    }
    message = channel.prepare_message(
        letter.body,
        None,
        letter.content_type or "application/json",
        properties.get("content_encoding") or "utf-8",
        headers,
        kept,
    )
    exchange, routing_key = requeue_route(service, letter)
    # Confirmed before the dead letter is acknowledged, so a requeue never loses one.
    channel.basic_publish_confirm(
        message, exchange=exchange, routing_key=routing_key, mandatory=True
    )
