"""The retry queues a worker has declared lately: each once per connection, then
now and then to renew its lease, and again at once after one failed to take a copy."""

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

    def __init__(
        self, connection: BrokerConnection, *, queue_type: str = "classic"
    ) -> None:
        self._connection = connection
        self._queue_type = queue_type
        # Retry queues declared on connection generation _generation: name -> when
        # (monotonic), so each is declared once per connection, then now and then.
        self._declared: dict[str, float] = {}
        self._generation = -1
        self._lock = threading.Lock()

    def route(self, origin: str, delay_ms: int) -> str:
        """The retry queue in front of ``origin`` for ``delay_ms``, declared.

        QueueRefusedError when the broker refuses the declare (a classic queue
        whose home node is down), BrokerError when the connection fails.
        """
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
        # On a channel of its own: a refusal must not close the consumers' channel.
        self._connection.declare_queue(
            queue,
            arguments=protocol.retry_queue_arguments(
                origin, delay_ms, self._queue_type
            ),
        )
        with self._lock:
            if generation == self._generation:
                self._declared[queue] = now

    def forget(self, queue: str) -> None:
        """``queue`` did not take a copy: declare it again before the next one.

        A classic queue whose node went down still routes, and the broker refuses
        each copy (nack); declared again, it is refused at once, which tells the
        worker to look elsewhere.
        """
        with self._lock:
            self._declared.pop(queue, None)
