"""Publisher confirms: publishes the broker has not confirmed yet, settled by tag."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from rpc.errors import BrokerError

NACKED = "the broker refused the message (nack)"
LOST = "connection lost before the broker confirmed the message"


class Confirms:
    """The unconfirmed publishes of one confirm channel, and the returns among them.

    The wait for a confirm happens in the publisher, never under the lock, so any
    number of threads can have publishes in flight: whichever thread reads the
    broker's acks settles them here by delivery tag. Callers hold the lock.
    """

    def __init__(self) -> None:
        self.tag = 0
        #: delivery tag -> (future, message id) of publishes not confirmed yet
        self.unconfirmed: dict[int, tuple[Future[bool], str]] = {}
        #: message ids the broker returned as unroutable, awaiting their confirm
        self.returned: set[str] = set()

    def listen(self, channel: Any) -> None:
        """Put ``channel`` in confirm mode and settle from its acks, nacks, returns."""
        # A plain confirm.select: py-amqp's own confirm mode would block every
        # publish until its ack arrives; the acks are handled as events instead.
        channel.confirm_select()
        channel.events["basic_ack"].add(self.on_ack)
        channel.events["basic_nack"].add(self.on_nack)
        channel.events["basic_return"].add(self.on_return)
        # Tags count publishes on the channel, from 1 after confirm.select.
        self.tag = 0

    def expect(self, future: Future[bool], message_id: str) -> int:
        """Count one publish about to go out on the confirm channel; its tag."""
        self.tag += 1
        self.unconfirmed[self.tag] = (future, message_id)
        return self.tag

    def forget(self, tag: int) -> None:
        """The publish of ``tag`` never went out."""
        self.unconfirmed.pop(tag, None)

    def on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self.settle(delivery_tag, multiple, None)

    def on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self.settle(delivery_tag, multiple, BrokerError(NACKED))

    def on_return(
        self, exc: Any, exchange: str, routing_key: str, message: Any
    ) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        message_id = message.properties.get("message_id")
        if message_id:
            self.returned.add(message_id)

    def settle(self, tag: int, multiple: bool, error: BrokerError | None) -> None:
        """Resolve ``tag`` (and every earlier one, if ``multiple``)."""
        tags = [t for t in self.unconfirmed if t <= tag] if multiple else [tag]
        for each in tags:
            entry = self.unconfirmed.pop(each, None)
            if entry is None:
                continue
            future, message_id = entry
            routed = message_id not in self.returned
            self.returned.discard(message_id)
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(routed)

    def connection_lost(self) -> None:
        """Fail every publish in flight: whether the broker took it is unknown."""
        pending, self.unconfirmed = self.unconfirmed, {}
        self.returned.clear()
        error = BrokerError(LOST)
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(error)
