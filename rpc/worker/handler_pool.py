"""The threads that run a worker's plain handlers, and read the socket while idle.

A thread pool fed by the connection's I/O thread hands every request from one thread
to another: a wake-up and a switch of the GIL that, on a busy machine, cost more than
the whole Python work of a call. Here an idle handler thread borrows the reading from
the I/O thread (:meth:`rpc.transport.BrokerConnection.read_until`, one at a time):
the request it reads, it keeps and runs itself, so a call that arrives at an idle
worker crosses no thread on its way to its handler. Whatever else arrives meanwhile
is queued for the other threads, as in any pool (leader/followers).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from rpc.transport import BrokerConnection

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds an idle thread waits for work or reads before looking around again.
IDLE_WAIT = 1.0


class _Stop:
    """Tells one thread to end."""


_STOP = _Stop()


class HandlerPool(Generic[T]):
    """``size`` threads calling ``handle(item)`` for each submitted item."""

    def __init__(
        self,
        size: int,
        handle: Callable[[T], None],
        *,
        connection: BrokerConnection | None = None,
        name: str = "rpc-handler",
    ) -> None:
        if size < 1:
            raise ValueError("a handler pool needs at least one thread")
        self._size = size
        self._handle = handle
        self._connection = connection
        self._name = name
        self._queue: queue.SimpleQueue[T | _Stop] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._closed = False
        self._start_lock = threading.Lock()

    def submit(self, item: T) -> None:
        """Run ``item`` on a handler thread; a reading handler thread keeps it."""
        if self._closed:
            raise RuntimeError("the handler pool is shut down")
        local = self._local
        if getattr(local, "reading", False) and local.kept is None:
            local.kept = item  # it runs here once the read returns: no hand-off
            return
        self._start_threads()
        self._queue.put(item)

    def shutdown(self, *, wait: bool = True, cancel_pending: bool = False) -> None:
        """End the threads after the queued items ran (or were dropped)."""
        self._closed = True
        if cancel_pending:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        for _ in self._threads:
            self._queue.put(_STOP)
        if self._connection is not None:
            self._connection.interrupt_reader()
        if wait:
            current = threading.current_thread()
            for thread in self._threads:
                if thread is not current:
                    thread.join()

    def start(self) -> None:
        """Start the threads now rather than at the first submit."""
        self._start_threads()

    def _start_threads(self) -> None:
        if len(self._threads) == self._size:
            return
        with self._start_lock:
            while len(self._threads) < self._size and not self._closed:
                thread = threading.Thread(
                    target=self._work,
                    name=f"{self._name}_{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        local = self._local
        local.reading = False
        local.kept = None
        while True:
            item = self._next(local)
            if item is None:
                if self._closed and self._queue.empty():
                    return
                continue
            if isinstance(item, _Stop):
                return
            try:
                self._handle(item)
            except Exception:  # handle() deals with its own errors; this is a bug
                log.exception("%s: handler failed", self._name)

    def _next(self, local: threading.local) -> T | _Stop | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            pass
        connection = self._connection
        if connection is not None and not self._closed:
            local.reading = True
            try:
                # Also stop for what the I/O thread queued after the look above and
                # before this thread took the socket: nobody else may be idle to
                # take it, and this read would otherwise last IDLE_WAIT.
                read = connection.read_until(
                    lambda: (
                        local.kept is not None
                        or self._closed
                        or not self._queue.empty()
                    ),
                    IDLE_WAIT,
                )
            finally:
                local.reading = False
                kept, local.kept = local.kept, None
            if kept is not None:
                return kept  # type: ignore[no-any-return]
            if read:
                return None
        try:
            return self._queue.get(timeout=IDLE_WAIT)
        except queue.Empty:
            return None
