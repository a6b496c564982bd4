"""Who reads the socket now: the I/O thread, a thread borrowing it, or an event loop.

Reading is a role rather than a thread: a thread that is about to block until
something arrives (a caller waiting for its reply, an idle handler thread waiting for
work) may borrow it with :meth:`ReadingRole.read_until`, and an event loop with calls
in flight with a :class:`~rpc.transport.loop_reading.LoopReader`. The I/O thread
then steps aside and the borrower reads the frames itself, so the answer it waits
for reaches it without crossing to another thread: on a busy machine each such
hand-off (a wake-up and a switch of the GIL) costs more than the Python work of a
whole call.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rpc import wire
from rpc.errors import BrokerError
from rpc.transport import _pyamqp
from rpc.transport.dispatching import Dispatcher
from rpc.transport.drivers import FRAMES_PER_LOCK
from rpc.transport.link import Link

if TYPE_CHECKING:
    from rpc.transport.loop_reading import LoopReader

#: Seconds the I/O thread leaves the socket to a thread that just stopped reading
#: it: longest delay of a frame nobody waits for (a reply to a call nobody asks the
#: result of yet) right after a borrowed read.
READ_GRACE = 0.002
#: A borrowed read that lasts longer than this (seconds) is a thread waiting for
#: work rather than for a reply: the I/O thread sleeps through it instead of polling.
LONG_BORROW = 0.05


class ReadingRole:
    """The read token of one connection, and who holds it.

    The token is held by whichever thread reads the socket; the lock of the link is
    taken inside it, frames are read a bounded batch per lock hold so publishers are
    never starved.
    """

    def __init__(self, link: Link, dispatcher: Dispatcher) -> None:
        self.link = link
        self._dispatcher = dispatcher
        self.lock = link.lock
        #: Held by whichever thread reads the socket (the I/O thread or a borrower).
        self.token = threading.Lock()
        #: Set while a thread other than the I/O thread has borrowed the reading.
        self._borrowed = False
        #: When the last borrower gave the reading back (monotonic seconds).
        self._borrow_ended = 0.0
        self._borrow_started = 0.0
        #: Set while the I/O thread waits in select(): a borrower must wake it.
        self._io_reading = False
        #: Set while the I/O thread sleeps through a long borrow: its end must wake it.
        self._io_sleeping = False
        self._borrow_changed = threading.Condition()
        #: The event loop's reader that has borrowed the reading, if one has.
        self.lender: LoopReader | None = None

    # -- the I/O thread ------------------------------------------------------------

    def pump(self, sock: socket.socket, reader: wire.FrameReader) -> None:
        """One turn of the I/O thread: read what arrives, unless a borrower reads."""
        link = self.link
        interval = link.tick_interval()
        with self._borrow_changed:
            now = time.monotonic()
            if self._borrowed and now - self._borrow_started > LONG_BORROW:
                # A long wait (an idle worker's handler thread waiting for work, a
                # loop with calls in flight): sleep until it ends, and have the
                # borrower say when.
                self._io_sleeping = True
                self._borrow_changed.wait(interval)
                self._io_sleeping = False
                parked = True
            elif self._borrowed or now - self._borrow_ended < READ_GRACE:
                # Short borrows, one after the other (a caller making call after
                # call): look again in a moment rather than be told each time, and
                # stay out of select() so that the next borrower need not wake us.
                self._borrow_changed.wait(READ_GRACE)
                parked = True
            else:
                self._io_reading = True
                parked = False
        if parked:
            lender = self.lender
            if lender is not None and not lender.alive():
                # A loop that stopped or closed with calls in flight reads nothing.
                lender.revoke()
            with self.lock:
                link.heartbeat_tick()
            return
        wake = link.wake_reader
        assert wake is not None
        try:
            if not self.token.acquire(timeout=READ_GRACE):
                # A borrower took the socket between our look and here: it reads.
                # Waiting for the token would hold up the periodic work until its
                # read ends, which may be a caller's whole deadline.
                return
            try:
                ready = readable(sock, wake, interval, reader)
                if wake in ready:
                    with contextlib.suppress(OSError):
                        wake.recv(4096)
                self.drain(sock, ready)
            finally:
                self.token.release()
        finally:
            with self._borrow_changed:
                self._io_reading = False

    def drain(
        self,
        sock: socket.socket,
        ready: list[socket.socket],
        enough: Callable[[], bool] | None = None,
        *,
        wait: bool = True,
    ) -> None:
        """Read the frames waiting on ``sock``; the caller holds the read token.

        With ``enough``, stop as soon as it is true: a borrower whose wait is over
        leaves the rest to the next reader rather than look for more. Without
        ``wait`` (an event loop), read the socket once and only the whole frames
        that gives: the rest of a frame cut off midway is left for the next turn.
        """
        link = self.link
        lock = self.lock
        driver = link.driver
        reader = driver.reader if driver is not None else None
        if not lock.acquire(blocking=False):
            lock.acquire()
            # Whoever held the lock may have read what select() saw: a synchronous
            # AMQP method (a declare, basic.get) reads its answer itself. Look again
            # rather than block in recv() on bytes that are gone.
            ready = readable(sock, None, 0, reader)
        try:
            driver = link.driver
            if driver is None or driver.sock is not sock or driver.raw is None:
                raise BrokerError("connection closed")
            raw = driver.raw
            reader = driver.reader
            assert reader is not None
            dispatcher = self._dispatcher
            deliver = dispatcher.deliver
            take = dispatcher.take
            partial = dispatcher.partial  # changed in place, never replaced
            deliver_method = wire.DELIVER
            delivered = False
            if not wait:
                if sock in ready:
                    reader.fill()
                ready = []
            try:
                # Read a bounded batch per lock hold so publishers are never starved.
                for _ in range(FRAMES_PER_LOCK):
                    if sock not in ready and not reader.has_frame():
                        break
                    # One frame at a time, with no timeout: py-amqp's drain_events()
                    # would wait for a whole message, and after a heartbeat frame for
                    # the next frame, holding the lock; a timeout costs two system
                    # calls per frame to set and clear. select() said bytes are
                    # there (or the buffer has a frame); SO_RCVTIMEO bounds the wait
                    # for the rest of a frame.
                    frame = reader.read_frame()
                    if (partial and take(frame)) or (
                        frame[0] == 1
                        and frame[2][:4] == deliver_method
                        and deliver(reader, frame)
                    ):
                        delivered = True
                    else:
                        _pyamqp.hand_frame(raw, frame)
                    if enough is not None and enough():
                        break
                    if wait and not reader.has_frame():
                        ready = readable(sock, None, 0)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # A borrower interrupted (KeyboardInterrupt in a main thread)
                    # may stop between the frames of one message, which py-amqp
                    # then half holds: the next reader would start inside it.
                    # Make the link again.
                    link.connected.clear()
                    link.interrupt()
                raise
            finally:
                if delivered:
                    # py-amqp's heartbeats count the frames it reads; these it
                    # did not, and one count says the link is alive.
                    _pyamqp.count_read(raw)
            link.heartbeat_tick()
        finally:
            lock.release()

    # -- a thread borrowing the reading --------------------------------------------

    def read_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read frames on this thread until ``done()`` or ``timeout`` seconds pass.

        Returns False at once, having read nothing, when it cannot borrow the
        reading (another thread has it, the transport has no socket, this is the
        I/O thread): the caller then waits as it would have anyway. A broken link
        is handed to the I/O thread, which reconnects; this thread just returns.
        """
        link = self.link
        if timeout <= 0 or threading.current_thread() is link.thread:
            return False
        driver = link.driver
        sock = driver.sock if driver is not None else None
        if sock is None or not link.connected.is_set():
            return False
        deadline = time.monotonic() + timeout
        if not self.borrow():
            return False
        try:
            if not self.token.acquire(timeout=timeout):
                return True
            try:
                self._read_while(sock, done, deadline)
            finally:
                self.token.release()
        finally:
            self.give_back()
        return True

    def _read_while(
        self, sock: socket.socket, done: Callable[[], bool], deadline: float
    ) -> None:
        # The caller holds the read token.
        link = self.link
        interval = link.tick_interval()
        wake = link.wake_reader
        while not done() and link.connected.is_set() and not link.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            driver = link.driver
            if driver is None or driver.sock is not sock or wake is None:
                return  # reconnected meanwhile: the I/O thread owns the new link
            try:
                # The wake socket is free while the I/O thread stands aside: a
                # failure noticed elsewhere, or stop(), interrupts this wait.
                ready = readable(sock, wake, min(remaining, interval), driver.reader)
                if wake in ready:
                    with contextlib.suppress(OSError):
                        wake.recv(4096)
                self.drain(sock, ready, done)
            except Exception as exc:
                link.failed(exc)  # the I/O thread notices and reconnects
                return

    # -- borrowing ------------------------------------------------------------------

    def borrow(self, lender: LoopReader | None = None) -> bool:
        """Take the reading from the I/O thread; False if another borrower has it.

        ``lender`` is the event loop's reader borrowing, None for a thread.
        """
        with self._borrow_changed:
            if self._borrowed:
                return False
            self._borrowed = True
            self._borrow_started = time.monotonic()
            self.lender = lender
            in_select = self._io_reading
        if in_select:
            self.link.wake()  # the I/O thread leaves select() and steps aside
        return True

    def give_back(self, lender: LoopReader | None = None) -> bool:
        """End the borrow of ``lender`` (None: of a thread); False if it had ended."""
        with self._borrow_changed:
            if self.lender is not lender:
                return False
            self.lender = None
            self._borrowed = False
            self._borrow_ended = time.monotonic()
            if self._io_sleeping:
                self._borrow_changed.notify()
        return True

    def interrupt(self) -> None:
        """Wake the I/O thread parked beside a borrower, and a loop that reads."""
        with self._borrow_changed:
            self._borrow_changed.notify_all()
        lender = self.lender
        if lender is not None:
            lender.look_again()

    def link_closed(self) -> None:
        """The socket is going: a loop reading it lets go (callers hold the lock)."""
        lender = self.lender
        if lender is not None:
            lender.revoke()


def readable(
    sock: socket.socket,
    wake: socket.socket | None,
    timeout: float,
    reader: wire.FrameReader | None = None,
) -> list[socket.socket]:
    """The sockets select() finds ready, counting bytes it cannot see as ready."""
    sockets = [sock] if wake is None else [sock, wake]
    buffered = has_buffered(sock)
    # select() cannot see what TLS already decrypted, nor the frames our reader
    # holds: a borrower that stopped after its own frame may have left them there.
    # The reader's frames only shorten the wait: looked at without the lock, they
    # may be gone by the time it is taken, and drain() looks again under it.
    held = reader is not None and reader.has_frame()
    ready, _, _ = select.select(sockets, [], [], 0 if buffered or held else timeout)
    if buffered and sock not in ready:
        ready.append(sock)
    return ready


def has_buffered(sock: socket.socket) -> bool:
    """Whether TLS holds decrypted bytes, which select() cannot see."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
