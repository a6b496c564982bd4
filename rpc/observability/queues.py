"""Queue depths and consumers, read with passive declares: no management plugin.

A passive declare asks the broker about a queue without creating it. Each read
opens its own short connection, so a queue that is missing (which closes the
channel) never disturbs a worker's own connection.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from rpc import protocol
from rpc.config import Config
from rpc.entrypoints import EventHandlerEntrypoint
from rpc.errors import BrokerError
from rpc.service import ServiceDefinition
from rpc.transport import BrokerConnection

log = logging.getLogger(__name__)

#: A scrape re-reads a queue at most this often, in seconds.
PROBE_INTERVAL = 5.0


@dataclasses.dataclass(frozen=True)
class QueueState:
    """What a passive declare said of one queue."""

    messages: int
    consumers: int


def read_queues(config: Config, queues: Sequence[str]) -> dict[str, QueueState | None]:
    """Each queue's depth and consumers; None for one that does not exist.

    Raises:
        BrokerError: the broker cannot be reached.
    """
    found: dict[str, QueueState | None] = {}
    pending = list(queues)
    while pending:
        connection = BrokerConnection(
            config.broker_url,
            name="queue-probe",
            heartbeat=0,
            connect_timeout=config.connect_timeout,
            on_connect=lambda channel: None,
            reconnect=False,
        )
        connection.start()
        try:
            while pending:
                queue = pending[0]
                try:
                    with connection.channel() as channel:
                        _, messages, consumers = channel.queue_declare(
                            queue=queue, passive=True
                        )
                except Exception:
                    # Missing (404): the broker closed the channel, so the rest are
                    # read on a fresh connection.
                    found[pending.pop(0)] = None
                    break
                found[pending.pop(0)] = QueueState(int(messages), int(consumers))
        finally:
            connection.stop()
    return found


def service_queues(definitions: Iterable[ServiceDefinition]) -> list[str]:
    """The shared queues a worker of these services consumes, and their dead letters.

    A broadcast handler's queue belongs to one process and is left out.
    """
    queues: list[str] = []
    for definition in definitions:
        queues.append(protocol.service_queue(definition.name))
        for handler in definition.other_handlers:
            entrypoint = handler.entrypoint
            if (
                isinstance(entrypoint, EventHandlerEntrypoint)
                and entrypoint.handler_type != protocol.BROADCAST
            ):
                queues.append(
                    protocol.event_queue(
                        definition.name,
                        entrypoint.method_name,
                        entrypoint.handler_type,
                        "",
                    )
                )
        queues.append(protocol.dead_letter_queue(definition.name))
    return queues


class QueueProbe:
    """Remembers each queue's state for :data:`PROBE_INTERVAL` seconds.

    However often it is asked (scrapes, several scrapers), the broker sees at most
    one passive declare per queue per interval.
    """

    def __init__(
        self,
        config: Config,
        queues: Sequence[str],
        *,
        interval: float = PROBE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self.queues = list(queues)
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._states: dict[str, QueueState | None] = {}
        #: Passive-declare rounds made so far (each one declare per queue).
        self.rounds = 0

    def states(self) -> dict[str, QueueState | None]:
        """The states, read again when the last read is older than the interval."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._interval:
                self._read_at = now
                self.rounds += 1
                try:
                    self._states = read_queues(self._config, self.queues)
                except BrokerError as exc:
                    log.debug("queue depths not read: %s", exc)
                    self._states = {}
            return dict(self._states)
