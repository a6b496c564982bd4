"""The handler pool: a plain pool, and a leader/followers pool when it may read."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import pytest

from rpc.worker.handler_pool import HandlerPool

WAIT = 10.0


class FakeConnection:
    """Stands in for BrokerConnection: one reader at a time, "reading" ``incoming``.

    What it reads it hands to the pool on the reading thread, as a consumer
    callback does inside the real ``read_until``.
    """

    def __init__(self) -> None:
        self.incoming: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
        self.pool: HandlerPool[str] | None = None
        self.read_by: dict[str, int] = {}
        self._reader = threading.Lock()

    def read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        if not self._reader.acquire(blocking=False):
            return False
        try:
            try:
                batch = self.incoming.get(timeout=min(timeout, 0.05))
            except queue.Empty:
                return True
            assert self.pool is not None
            for item in batch:
                self.read_by[item] = threading.get_ident()
                self.pool.submit(item)
            time.sleep(0.005)  # the rest of a read: time for another thread to step in
            return True
        finally:
            self._reader.release()

    def interrupt_reader(self) -> None:
        pass


def make_pool(
    size: int, handle: Callable[[str], None]
) -> tuple[HandlerPool[str], FakeConnection]:
    connection = FakeConnection()
    pool: HandlerPool[str] = HandlerPool(
        size,
        handle,
        connection=connection,  # type: ignore[arg-type]
    )
    connection.pool = pool
    pool.start()
    return pool, connection


def test_an_item_read_by_an_idle_thread_runs_on_that_thread():
    ran_by: dict[str, int] = {}
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()

    def handle(item: str) -> None:
        ran_by[item] = threading.get_ident()
        finished.put(item)

    pool, connection = make_pool(4, handle)
    try:
        for number in range(50):
            item = f"item-{number}"
            connection.incoming.put([item])
            assert finished.get(timeout=WAIT) == item
    finally:
        pool.shutdown()
    # No hand-off: each call ran where it was read, never on a thread woken for it.
    assert ran_by == connection.read_by


def test_the_rest_of_a_batch_goes_to_the_other_threads_at_once():
    barrier = threading.Barrier(3, timeout=WAIT)
    threads: set[int] = set()
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()

    def handle(item: str) -> None:
        threads.add(threading.get_ident())
        barrier.wait()  # only returns once all three run at the same time
        finished.put(item)

    pool, connection = make_pool(3, handle)
    try:
        connection.incoming.put(["a", "b", "c"])
        assert sorted(finished.get(timeout=WAIT) for _ in range(3)) == ["a", "b", "c"]
    finally:
        pool.shutdown()
    assert len(threads) == 3


def test_without_a_connection_it_is_a_plain_pool():
    done: queue.SimpleQueue[int] = queue.SimpleQueue()
    pool: HandlerPool[int] = HandlerPool(2, done.put)
    for number in range(20):
        pool.submit(number)
    pool.shutdown(wait=True)
    assert sorted(done.get_nowait() for _ in range(20)) == list(range(20))


def test_shutdown_runs_what_is_queued_unless_told_to_drop_it():
    gate = threading.Event()
    started = threading.Event()
    ran: list[int] = []

    def handle(number: int) -> None:
        started.set()
        gate.wait(WAIT)
        ran.append(number)

    pool: HandlerPool[int] = HandlerPool(1, handle)
    for number in range(5):
        pool.submit(number)
    # The first is running (blocked on the gate); the other four are queued.
    assert started.wait(WAIT)
    pool.shutdown(wait=False, cancel_pending=True)
    gate.set()
    for thread in pool._threads:
        thread.join(WAIT)
    assert ran == [0]
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(9)


def test_a_pool_needs_a_thread():
    with pytest.raises(ValueError):
        HandlerPool(0, print)


class LateConnection(FakeConnection):
    """A reader that finds the pool's queue filled just before it took the socket.

    The connection's I/O thread read an item and queued it between a pool thread's
    look at the queue and that thread's borrowing of the reading; then nothing
    more arrives. The reader waits until ``done()`` says to stop, as the real
    ``read_until`` does.
    """

    def __init__(self, late: str) -> None:
        super().__init__()
        self.late: str | None = late

    def read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        if not self._reader.acquire(blocking=False):
            return False
        try:
            item, self.late = self.late, None
            if item is not None:
                assert self.pool is not None
                # Queued by another thread, as the I/O thread does.
                queuing = threading.Thread(target=self.pool.submit, args=(item,))
                queuing.start()
                queuing.join(WAIT)
            deadline = time.monotonic() + timeout
            while not done() and time.monotonic() < deadline:
                time.sleep(0.01)
            return True
        finally:
            self._reader.release()


def test_an_item_queued_just_before_a_thread_reads_is_not_left_waiting(monkeypatch):
    # An idle thread reads for IDLE_WAIT at a time: long here, so that an item left
    # in the queue meanwhile would wait far longer than the bound below.
    monkeypatch.setattr("rpc.worker.handler_pool.IDLE_WAIT", 600.0)
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()
    connection = LateConnection("late")
    pool: HandlerPool[str] = HandlerPool(
        1,
        finished.put,
        connection=connection,  # type: ignore[arg-type]
    )
    connection.pool = pool
    pool.start()
    try:
        assert finished.get(timeout=WAIT) == "late"
    finally:
        pool.shutdown(wait=False)
