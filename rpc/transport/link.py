"""The link to the broker: connect, close, reconnect with backoff, heartbeats.

A :class:`Link` owns one Kombu connection at a time, its driver and its channel,
and the I/O thread that keeps them alive: every failure of the link ends up on that
thread, which tells the owner, drops the connection and dials again. The broker may
be a list of nodes (:mod:`rpc.broker_urls`): each attempt dials one node, with its
own short timeout, and the next attempt dials the next node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amqp.exceptions import AccessRefused, NotAllowed
from kombu.connection import Connection as KombuConnection

from rpc.broker_urls import BrokerNodes
from rpc.credentials import masked_url
from rpc.errors import AccessRefusedError, BrokerError
from rpc.logs import status
from rpc.tls import TlsSettings
from rpc.tls import describe_failure as describe_tls_failure
from rpc.transport import drivers
from rpc.transport.confirms import Confirms
from rpc.transport.dispatching import Dispatcher

if TYPE_CHECKING:
    from rpc.transport.reading import ReadingRole

log = logging.getLogger("rpc.transport")

#: Longest wait between two reconnection attempts, in seconds.
MAX_BACKOFF = 5.0
FIRST_BACKOFF = 0.1
#: Seconds a socket write may block before the connection is declared dead.
WRITE_TIMEOUT = 10.0
#: Seconds a clean close waits for the broker to answer before dropping the socket.
CLOSE_TIMEOUT = 2.0
#: Seconds an attempt may take (TCP connect, then AMQP handshake) when the broker
#: is a single node: with no other node to try, a slow one is worth the wait.
SINGLE_NODE_TIMEOUT = 5.0
#: The same for each node of a list, unless the owner says otherwise.
NODE_CONNECT_TIMEOUT = 2.0

RECONNECTING = "%s: connection to %s lost (%s); reconnecting"
READER_DIED = "%s: the thread reading the broker connection died; exiting with %d"
#: Exit status of a process whose reading thread died (EX_SOFTWARE): its supervisor
#: (``rpc run``'s, or systemd) starts it again.
READER_DIED_EXIT = 70
RECONNECTED = "%s: connected to %s"
RETRYING = "%s; retrying for up to %g s..."
#: What the broker answers to bad credentials (403) or a vhost it does not have or
#: allow (530): the same again would get the same answer.
_REFUSALS = (AccessRefused, NotAllowed)
NODE_FAILED = "%s: %s; trying the next node"
SET_UP_REFUSED = "%s: %s refused the set-up: %s"


class Link:
    """One broker connection at a time, made again whenever it breaks.

    ``on_connect(channel)`` runs under the lock after every (re)connection;
    ``on_disconnect(exc)`` when the connection is lost, before reconnection starts;
    ``on_tick()`` on the I/O thread about once a second. With ``exit_on_death``,
    the process exits at once (:func:`exit_process`) if the I/O thread ever ends
    by an exception: a worker must never stay alive without reading.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        heartbeat: float,
        connect_timeout: float,
        on_connect: Callable[[Any], None],
        on_disconnect: Callable[[BaseException], None] | None,
        on_tick: Callable[[], None] | None,
        reconnect: bool,
        confirms: Confirms | None,
        dispatcher: Dispatcher,
        exit_on_death: bool = False,
        node_timeout: float = NODE_CONNECT_TIMEOUT,
        listed_order: bool = False,
        tls: TlsSettings | None = None,
        login_method: str | None = None,
    ) -> None:
        self.url = url
        #: The nodes ``url`` lists (one, or a cluster's), and whose turn it is.
        self.nodes = BrokerNodes(url, first=0 if listed_order else None)
        self._node_timeout = (
            node_timeout if len(self.nodes) > 1 else SINGLE_NODE_TIMEOUT
        )
        self._tls = tls
        self._login_method = login_method
        self._exit_on_death = exit_on_death
        self.name = name
        self.heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_tick = on_tick
        self._reconnect = reconnect
        self.confirms = confirms
        self._dispatcher = dispatcher
        #: Held for every use of the connection: py-amqp is not thread-safe.
        self.lock = threading.RLock()
        self.connection: KombuConnection | None = None
        self.driver: drivers.Driver | None = None
        self.channel: Any = None
        #: The channel in confirm mode, when ``confirms`` and the driver has them.
        self.confirm_channel: Any = None
        self.generation = 0
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        #: Written to wake whichever thread waits in select() on the socket.
        self.wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._next_heartbeat_check = 0.0
        #: Set once the reading role exists: it takes the I/O thread's turns.
        self.reading: ReadingRole | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect (retrying until ``connect_timeout``) and start the I/O thread."""
        if self.stopping.is_set():
            raise BrokerError(f"{self.name}: a stopped connection cannot start again")
        self.wake_reader, self._wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        started = time.monotonic()
        deadline = started + self._connect_timeout
        backoff = FIRST_BACKOFF
        attempts = 0
        suspects = 0
        while True:
            attempts += 1
            try:
                self._connect(deadline)
                break
            except BrokerError as exc:
                # A refusal no retry can change (a certificate, a login) is said
                # now rather than after connect_timeout; so is a port that twice
                # hung up on the AMQP handshake the way a TLS listener does.
                suspects = suspects + 1 if getattr(exc, "tls_suspect", False) else 0
                refused = (
                    isinstance(exc, AccessRefusedError)
                    or getattr(exc, "permanent", False)
                    or suspects >= 2
                )
                remaining = deadline - time.monotonic()
                if refused or remaining <= 0:
                    # The caller may start again later: leave no sockets behind.
                    self.close_wake_sockets()
                    if refused or attempts == 1:
                        raise
                    took = time.monotonic() - started
                    raise BrokerError(
                        f"{exc} (gave up after {attempts} attempts in {took:.1f} s)"
                    ) from exc
                if attempts == 1:
                    status.info(RETRYING, exc, self._connect_timeout)
                # The last attempt is made at the deadline, not a backoff before it.
                time.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, MAX_BACKOFF)
        self.thread = threading.Thread(
            target=self._run, name=f"rpc-io-{self.name}", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Close the connection and end the I/O thread; safe to call twice."""
        self.stopping.set()
        self.interrupt()
        driver = self.driver
        if driver is not None:
            driver.interrupt()
        if self.thread is not None and self.thread is not threading.current_thread():
            # Long enough for a connection attempt in progress to give up.
            self.thread.join(timeout=min(self._connect_timeout, 5.0) + CLOSE_TIMEOUT)
        with self.lock:
            self.close_connection(graceful=True)
        self.close_wake_sockets()

    def close_wake_sockets(self) -> None:
        for sock in (self.wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()
        self.wake_reader = self._wake_writer = None

    def wake(self) -> None:
        """Interrupt a select() on the socket (the I/O thread's, or a borrower's)."""
        if self._wake_writer is not None:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")

    def interrupt(self) -> None:
        """Have whoever reads look at the link again now, wherever it waits: in
        select(), parked beside a borrower, or on an event loop."""
        self.wake()
        if self.reading is not None:
            self.reading.interrupt()

    # -- the live connection -------------------------------------------------------

    def live_channel(self) -> Any:
        """The channel; BrokerError if there is none. Callers hold the lock."""
        if not self.connected.is_set() or self.channel is None:
            raise BrokerError(f"not connected to the broker ({self.name})")
        return self.channel

    def failed(self, exc: BaseException) -> BrokerError:
        """Mark the link broken: the I/O thread notices and reconnects."""
        self.connected.clear()
        self.interrupt()
        return BrokerError(f"broker connection to {self.safe_url()} failed: {exc}")

    def errors(self) -> tuple[type[BaseException], ...]:
        """What a broken link raises on the current connection."""
        connection = self.connection
        base: tuple[type[BaseException], ...] = (OSError,)
        if connection is None:
            return base
        return (
            base
            + tuple(connection.connection_errors)
            + tuple(connection.channel_errors)
        )

    def safe_url(self) -> str:
        """The node in use, or last tried, with its password masked."""
        return self.nodes.safe_current

    def tick_interval(self) -> float:
        return min(1.0, self.heartbeat / 4) if self.heartbeat else 1.0

    def heartbeat_tick(self) -> None:
        """Send or check heartbeats when due; callers hold the lock."""
        # py-amqp wants its heartbeat tick about once a second, not every turn.
        if not self.heartbeat or self.connection is None:
            return
        now = time.monotonic()
        if now >= self._next_heartbeat_check:
            self._next_heartbeat_check = now + self.tick_interval()
            self.connection.heartbeat_check(rate=2)

    def _connect(self, deadline: float | None = None) -> None:
        """One round over the nodes: connected to one of them, or BrokerError.

        Each node gets its own attempt, bounded by the node timeout (and by
        ``deadline``, the time start-up may take in all), so a node that accepts
        TCP but never answers (frozen, or partitioned away) costs that much only.
        """
        failures: list[BrokerError] = []
        nodes = self.nodes.round()
        for index, url in enumerate(nodes):
            if failures and self.stopping.is_set():
                break
            timeout = self._node_timeout
            if deadline is not None:
                # Past the deadline, the rest of the round still gets a short try
                # each, so that the error names every node.
                timeout = max(min(timeout, deadline - time.monotonic()), 0.1)
            self.nodes.taking(url)
            try:
                self._connect_to(url, timeout)
                return
            except BrokerError as exc:
                failures.append(exc)
                if len(nodes) > 1 and index < len(nodes) - 1:
                    log.info(NODE_FAILED, self.name, exc)
        if len(failures) == 1:
            raise failures[0]
        # Refused by every node: retrying cannot help, and the caller must know it.
        refused = all(isinstance(exc, AccessRefusedError) for exc in failures)
        kind = AccessRefusedError if refused else BrokerError
        error = kind(
            f"cannot connect to any of the {len(nodes)} broker nodes: "
            + "; ".join(str(exc) for exc in failures)
        )
        for mark in ("permanent", "tls_suspect"):
            if all(getattr(exc, mark, False) for exc in failures):
                setattr(error, mark, True)
        raise error

    def _connect_to(self, url: str, timeout: float) -> None:
        tls = self._tls
        connection = KombuConnection(
            url,
            transport=drivers.kombu_transport(url),
            # A fresh dict each time: Kombu writes the host dialled into it.
            ssl=tls.ssl_options() if tls is not None else False,
            login_method=self._login_method,
            heartbeat=self.heartbeat or None,
            # py-amqp bounds both the TCP connect and each read of the handshake.
            connect_timeout=min(self._connect_timeout, timeout),
            # SO_SNDTIMEO and SO_RCVTIMEO: a socket call blocked this long means a
            # dead link (frames are read only once select() saw bytes).
            transport_options={
                "write_timeout": WRITE_TIMEOUT,
                "read_timeout": drivers.READ_TIMEOUT,
            },
        )
        try:
            # One attempt, at this node only: the rounds over nodes, and the waits
            # between them, are ours (Kombu's connect() would retry after 2 s).
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            channel = connection.channel()
            driver = drivers.open_driver(connection, self._dispatcher)
        except Exception as exc:
            with contextlib.suppress(Exception):
                connection.release()
            if isinstance(exc, _REFUSALS):
                # Bad credentials or a vhost not allowed: the same again gets the
                # same answer, so the caller is told at once, by type.
                error: BrokerError = AccessRefusedError(
                    f"the broker at {masked_url(url)} refused the connection: {exc}"
                )
                error.permanent = True  # type: ignore[attr-defined]
                raise error from exc
            raise connect_error(masked_url(url), exc, tls=tls is not None) from exc
        with self.lock:
            self.connection = connection
            self.driver = driver
            self.channel = channel
            self.generation += 1
            try:
                self._on_connect(channel)
                if self.confirms is not None:
                    self.confirm_channel = driver.open_confirms(self.confirms)
            except BrokerError:
                self.close_connection()
                raise
            except connection.channel_errors as exc:
                self.close_connection()
                # Not a node failing: a setting the broker refuses (a queue declared
                # with other arguments, say), which no reconnection will mend.
                log.warning(SET_UP_REFUSED, self.name, self.safe_url(), exc)
                error = BrokerError(f"{self.safe_url()} refused the set-up: {exc}")
                if getattr(exc, "reply_code", None) == ACCESS_REFUSED:
                    # The user's permissions do not cover what this process
                    # declares or consumes: retrying cannot help.
                    error = BrokerError(
                        f"{self.safe_url()} refused the set-up: {exc} (the user's "
                        "permissions do not cover it: see `rpc broker permissions`)"
                    )
                    error.permanent = True  # type: ignore[attr-defined]
                raise error from exc
            except connection.connection_errors as exc:
                self.close_connection()
                raise BrokerError(
                    f"connection to {self.safe_url()} lost during the set-up: {exc}"
                ) from exc
            self.connected.set()
        log.debug(RECONNECTED, self.name, self.safe_url())

    def close_connection(self, *, graceful: bool = False) -> None:
        """Drop the connection; ``graceful`` says goodbye to the broker first.

        A goodbye waits for the broker's answer, which never comes from a peer that
        vanished: it is bounded by :data:`CLOSE_TIMEOUT`, and a lost connection is
        only torn down locally. Callers hold the lock.
        """
        self.connected.clear()
        driver, self.driver = self.driver, None
        self._dispatcher.clear()
        connection, self.connection, self.channel = self.connection, None, None
        self.confirm_channel = None
        if self.confirms is not None:
            self.confirms.connection_lost()
        if self.reading is not None:
            self.reading.link_closed()
        if connection is None:
            return
        if graceful:
            sock = driver.sock if driver is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(CLOSE_TIMEOUT)
            with contextlib.suppress(Exception):
                connection.release()
                return
        with contextlib.suppress(Exception):
            connection.collect()

    # -- the I/O thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            if self._exit_on_death:
                log.critical(READER_DIED, self.name, READER_DIED_EXIT, exc_info=exc)
                exit_process(READER_DIED_EXIT)
            # Not a worker (a client in someone's app): fail loudly, never kill it.
            self.connected.clear()
            self.stopping.set()
            log.critical(
                "%s: the broker connection is unusable", self.name, exc_info=exc
            )
            if self._on_disconnect is not None:
                with contextlib.suppress(Exception):
                    self._on_disconnect(exc)

    def _serve(self) -> None:
        last_tick = 0.0
        while not self.stopping.is_set():
            try:
                driver = self.driver
                if not self.connected.is_set() or driver is None:
                    raise BrokerError("connection marked as lost")
                assert self.reading is not None
                driver.turn(self.reading)
            except Exception as exc:  # every failure of the link ends up here
                if self.stopping.is_set():
                    break
                self._lost(exc)
                continue
            now = time.monotonic()
            if self._on_tick is not None and now - last_tick >= 1.0:
                last_tick = now
                try:
                    self._on_tick()
                except Exception:
                    log.exception("%s: periodic task failed", self.name)

    def _lost(self, exc: BaseException) -> None:
        self.connected.clear()
        self.interrupt()  # a borrower of the reading stops and gives it back
        assert self.reading is not None
        with self.reading.token, self.lock:
            self.close_connection()
        node = self.safe_url()
        log.warning(RECONNECTING, self.name, node, exc)
        if self._on_disconnect is not None:
            try:
                # Named after the node, for the errors of the calls it fails.
                self._on_disconnect(BrokerError(f"{node}: {exc}"))
            except Exception:
                log.exception("%s: disconnect handler failed", self.name)
        if not self._reconnect:
            self.stopping.set()
            return
        backoff = FIRST_BACKOFF
        refused = False
        while not self.stopping.is_set():
            try:
                self._connect()
                log.info(RECONNECTED, self.name, self.safe_url())
                return
            except BrokerError as error:
                if getattr(error, "permanent", False) and not refused:
                    # Said once: an operator must change the broker or the config.
                    refused = True
                    log.warning("%s: reconnect refused: %s", self.name, error)
                else:
                    log.debug("%s: reconnect failed: %s", self.name, error)
            self.stopping.wait(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, MAX_BACKOFF)


#: AMQP reply code of a refused login or a resource the user may not use.
ACCESS_REFUSED = 403


def connect_error(url: str, exc: BaseException, *, tls: bool) -> BrokerError:
    """The one-line BrokerError of a failed connection attempt to ``url``.

    Those no retry can mend are marked ``permanent``: a TLS certificate refused, a
    login refused, a plain AMQP client at a TLS port.
    """
    reason = describe_tls_failure(exc)
    permanent = reason is not None
    if reason is None and getattr(exc, "reply_code", None) == ACCESS_REFUSED:
        reason = f"the broker refused the login: {exc}"
        permanent = True
    suspect = reason is None and not tls and _looks_like_tls(exc)
    if suspect:
        reason = (
            f"{exc} (the port may expect TLS: use an amqps:// URL for a TLS listener)"
        )
    error = BrokerError(f"cannot connect to {url}: {reason or exc}")
    error.permanent = permanent  # type: ignore[attr-defined]
    error.tls_suspect = suspect  # type: ignore[attr-defined]
    return error


def _looks_like_tls(exc: BaseException) -> bool:
    """Whether a plain AMQP handshake failed the way a TLS listener makes it fail.

    TCP connects, then RabbitMQ's TLS listener reads the AMQP protocol header as a
    broken ClientHello and resets the connection (after its handshake timeout), or
    answers with a TLS alert record that py-amqp reads as a frame of type 21.
    """
    if isinstance(exc, ConnectionResetError):
        return True
    text = str(exc)
    return "frame type 21" in text or "unexpectedly closed" in text


def exit_process(status: int) -> None:
    """End this process now, whatever its other threads do; tests replace it."""
    for stream in (sys.stderr, sys.stdout):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
