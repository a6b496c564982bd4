"""An event loop's share of the reading: it reads its own replies while calls await.

A coroutine awaiting its reply would otherwise wait for the I/O thread to read it
and hand it over with ``call_soon_threadsafe``: a wake-up of the loop from another
thread and a switch of the GIL, for every call. While calls of a loop await, that
loop borrows the reading instead, as a waiting thread does with ``read_until``: it
watches the socket with ``add_reader`` and reads what arrives on its own thread, so
callbacks (the reply's settling) run where the awaiting coroutine lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from rpc.transport.reading import ReadingRole, has_buffered, readable

#: Seconds an event loop keeps the reading after its last call got its reply: the
#: next call of a caller making call after call finds the socket still watched.
LOOP_GRACE = 0.05


class LoopReader:
    """One event loop's borrow of one connection's reading.

    Used from the loop's thread only, except :meth:`revoke`, which a closing link or
    the I/O thread (once the loop stopped) may call from theirs.
    """

    def __init__(self, reading: ReadingRole, loop: asyncio.AbstractEventLoop) -> None:
        self._reading = reading
        self.loop = loop
        self._waiting = 0
        #: A duplicate of the socket's descriptor, registered with the loop: ours to
        #: close, so the loop never watches a number the link closed and reused.
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._scheduled = False
        #: The one timer that gives the reading back once the loop stayed idle for
        #: LOOP_GRACE; it is not moved on every call, only looked at when it fires.
        self._idle: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    def enter(self) -> None:
        """A call of this loop starts waiting for its reply."""
        self._waiting += 1
        if self._fd is None:
            self._lend()

    def leave(self) -> None:
        """A call of this loop stopped waiting; soon after the last one, the loop
        gives the reading back."""
        self._waiting -= 1
        if self._waiting <= 0:
            self._waiting = 0
            if self._fd is not None:
                self._idle_since = self.loop.time()
                if self._idle is None:
                    self._idle = self.loop.call_at(
                        self._idle_since + LOOP_GRACE, self._give_back
                    )

    def alive(self) -> bool:
        """Whether the loop runs: a stopped or closed one reads nothing."""
        return self.loop.is_running() and not self.loop.is_closed()

    def revoke(self, *, on_loop: bool = False) -> None:
        """End this loop's borrow now; from any thread.

        ``on_loop`` when called on the loop's thread, which then lets go of the
        socket at once rather than on its next turn.
        """
        if not self._reading.give_back(self):
            return
        if on_loop or not self.alive():  # closed, or stopped: nobody polls it now
            self._unwatch()
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            self.loop.call_soon_threadsafe(self._unwatch_if_revoked)

    def look_again(self) -> None:
        """From any thread: have the loop look at the link and the socket now
        (frames left buffered, a link marked broken, a stop)."""
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            self.loop.call_soon_threadsafe(self._readable)

    def _lend(self) -> None:
        link = self._reading.link
        driver = link.driver
        sock = driver.sock if driver is not None else None
        if sock is None or driver is None or not link.connected.is_set():
            return  # no socket (Kombu's memory transport): the I/O thread reads
        if not self._reading.borrow(self):
            return  # another borrower reads, and settles our replies from there
        try:
            self._watch(sock)
        except (OSError, RuntimeError, ValueError):
            self.revoke(on_loop=True)
            return
        reader = driver.reader
        if (reader is not None and reader.has_frame()) or has_buffered(sock):
            # Frames a reader before us left buffered: select() cannot see them.
            self._read_soon()

    def _give_back(self) -> None:
        self._idle = None
        if self._waiting or self._fd is None:
            return  # busy again: the next leave() sets the timer anew
        due = self._idle_since + LOOP_GRACE
        if self.loop.time() < due:  # a call came and went since: idle for less
            self._idle = self.loop.call_at(due, self._give_back)
            return
        self.revoke(on_loop=True)

    def _watch(self, sock: socket.socket) -> None:
        fd = os.dup(sock.fileno())
        try:
            self.loop.add_reader(fd, self._readable)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._sock = fd, sock

    def _unwatch(self) -> None:
        fd, self._fd, self._sock = self._fd, None, None
        if fd is None:
            return
        if not self.loop.is_closed():
            with contextlib.suppress(Exception):
                self.loop.remove_reader(fd)
        os.close(fd)

    def _unwatch_if_revoked(self) -> None:
        if self._reading.lender is not self:
            self._unwatch()

    def _read_soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._read_scheduled)

    def _read_scheduled(self) -> None:
        self._scheduled = False
        self._readable()

    def _readable(self) -> None:
        """Read what waits on the socket, on the loop; never wait for more."""
        sock = self._sock
        if sock is None:
            return
        reading = self._reading
        link = reading.link
        driver = link.driver
        if reading.lender is not self or driver is None or driver.sock is not sock:
            self._unwatch()
            return
        if not link.connected.is_set() or link.stopping.is_set():
            # Broken or stopping: the I/O thread takes over, and makes it again.
            self.revoke(on_loop=True)
            return
        if not reading.token.acquire(blocking=False):
            # The I/O thread is ending a read it began before the loop borrowed:
            # it leaves at once, and what it leaves buffered is ours.
            self._read_soon()
            return
        try:
            # Looked at again, never assumed: a synchronous method under the lock,
            # or the I/O thread before it stepped aside, may have read what the
            # loop was told of, and a read on bytes that are gone blocks the loop.
            reading.drain(sock, readable(sock, None, 0), wait=False)
        except Exception as exc:
            link.failed(exc)  # the I/O thread notices and reconnects
            self.revoke(on_loop=True)
            return
        finally:
            reading.token.release()
        reader = driver.reader
        if (reader is not None and reader.has_frame()) or has_buffered(sock):
            self._read_soon()
