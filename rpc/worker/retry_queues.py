"""The retry queues a worker has declared lately: each once per connection, then
now and then to renew its lease."""

from __future__ import annotations

import threading
import time

from rpc import protocol
from rpc.transport import BrokerConnection

#: Seconds after which a worker declares a retry queue again, renewing its lease
#: (``x-expires``); far below :data:`rpc.protocol.RETRY_QUEUE_IDLE_MS`.
RETRY_QUEUE_REDECLARE = 60.0


class RetryQueues:
    """Declares :func:`rpc.protocol.retry_queue` queues on demand, remembering when."""

    def __init__(self, connection: BrokerConnection) -> None:
        self._connection = connection
        # Retry queues declared on connection generation _generation: name -> when
        # (monotonic), so each is declared once per connection, then now and then.
        self._declared: dict[str, float] = {}
        self._generation = -1
        self._lock = threading.Lock()

    def route(self, origin: str, delay_ms: int) -> str:
        """The retry queue in front of ``origin`` for ``delay_ms``, declared."""
        queue = protocol.retry_queue(origin, delay_ms)
        self.declare(queue, origin, delay_ms)
        return queue

    def declare(self, queue: str, origin: str, delay_ms: int) -> None:
        """Declare ``queue`` unless done lately on this connection."""
        now = time.monotonic()
        generation = self._connection.generation
        with self._lock:
            if generation != self._generation:
                self._declared.clear()
                self._generation = generation
            declared = self._declared.get(queue)
            if declared is not None and now - declared < RETRY_QUEUE_REDECLARE:
                return
        # Declaring again renews the queue's x-expires lease: a queue that expired
        # with copies in it would take them along, and later ones would go nowhere.
        with self._connection.channel() as channel:
            channel.queue_declare(
                queue=queue,
                durable=True,
                auto_delete=False,
                exclusive=False,
                arguments=protocol.retry_queue_arguments(origin, delay_ms),
            )
        with self._lock:
            if generation == self._generation:
                self._declared[queue] = now
