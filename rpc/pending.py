"""Tracking calls in flight: replies, returns, expiry, and resends after reconnection.

I/O-free but for the ``publish`` functions it is handed. Every callback here runs on
the thread reading the connection (its I/O thread, or a caller reading its own reply)
and only hands results over to the waiter of each call. Whoever takes a call out of
the map settles its waiter: that is what makes each waiter settle once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from rpc import protocol
from rpc.calls import PreparedCall, not_routed
from rpc.errors import BrokerError, CallTimeoutError
from rpc.transport import Delivery

log = logging.getLogger(__name__)

RESENT = "%s: sent again after a reconnection (attempt %d)"


class Waiter(Protocol):
    """What waits for one call's reply; the reading thread settles it exactly once."""

    service: str
    deadline: float

    @property
    def label(self) -> str: ...

    def _deliver(self, delivery: Delivery) -> None: ...

    def _fail(self, exc: Exception) -> None: ...


@dataclasses.dataclass(eq=False)
class PendingCall:
    """A call published and not yet answered, with what it takes to send it again."""

    waiter: Waiter
    call: PreparedCall
    #: What the caller said; None means "as the service declares in its replies".
    idempotent: bool | None
    attempts: int = 1


def timed_out(label: str) -> CallTimeoutError:
    """The error of a call whose deadline passed without a reply."""
    return CallTimeoutError(f"{label} got no reply before its deadline")


class PendingCalls:
    """The calls of one proxy that wait for a reply, by correlation id.

    When the connection is lost, the replies of calls in flight are lost with it:
    those calls fail at once with :class:`BrokerError`, except idempotent ones, kept
    to be published again once reconnected (within their deadline). A method is
    idempotent when the call says so or, failing that, when the service's replies say
    it is declared ``@rpc(idempotent=True)``: that is remembered per
    ``service.method``.
    """

    def __init__(self) -> None:
        self._pending: dict[str, PendingCall] = {}
        #: Idempotent calls that lost their connection and wait for the next one.
        self._resend: dict[str, PendingCall] = {}
        self._lock = threading.Lock()
        #: ``(service, method)`` whose replies said they are idempotent.
        self._idempotent_methods: set[tuple[str, str]] = set()
        #: Requests answered by many replies (discovery): correlation id -> callback.
        self._listeners: dict[str, Callable[[Delivery], None]] = {}

    def __len__(self) -> int:
        """Calls waiting for a reply now (not those waiting to be sent again)."""
        return len(self._pending)

    @property
    def listening(self) -> int:
        """Requests whose replies go to a listener (see :meth:`listen`)."""
        return len(self._listeners)

    def add(
        self, call: PreparedCall, waiter: Waiter, idempotent: bool | None
    ) -> PendingCall:
        """Register ``waiter`` for the reply of ``call``, before it is published."""
        entry = PendingCall(waiter, call, idempotent)
        with self._lock:
            self._pending[call.correlation_id] = entry
        return entry

    def publish_failed(self, entry: PendingCall, *, retry: bool) -> bool:
        """The publish of ``entry`` raised BrokerError: True if it will be sent later.

        It is, when the lost connection took it over already, or when ``retry`` (the
        proxy runs on) and the call is idempotent; else it is forgotten and the
        caller gets the error.
        """
        correlation_id = entry.call.correlation_id
        with self._lock:
            self._pending.pop(correlation_id, None)
            if correlation_id in self._resend:
                return True  # the lost connection took it over: sent on reconnection
            if not (retry and self._retryable(entry)):
                return False
            # Sent by the I/O thread once connected again (or failed at the deadline).
            entry.attempts += 1
            self._resend[correlation_id] = entry
            return True

    @property
    def has_resends(self) -> bool:
        return bool(self._resend)

    def send_again(self, publish: Callable[[PendingCall], None]) -> None:
        """Publish the idempotent calls a lost connection took with it."""
        with self._lock:
            waiting, self._resend = self._resend, {}
        now = time.time()
        for correlation_id, entry in list(waiting.items()):
            waiter = entry.waiter
            if entry.call.deadline <= now:
                del waiting[correlation_id]
                waiter._fail(timed_out(waiter.label))
                continue
            with self._lock:
                self._pending[correlation_id] = entry
            try:
                publish(entry)
            except BaseException:
                # This connection failed too: keep the rest for the next one.
                with self._lock:
                    self._pending.pop(correlation_id, None)
                    self._resend.update(waiting)
                raise
            del waiting[correlation_id]
            log.info(RESENT, waiter.label, entry.attempts)

    def listen(self, correlation_id: str, listener: Callable[[Delivery], None]) -> None:
        """Send every reply to ``correlation_id`` to ``listener``, until forgotten."""
        self._listeners[correlation_id] = listener

    def forget(self, correlation_id: str) -> bool:
        """Stop waiting for a reply; True if the call was still waiting for one."""
        with self._lock:
            taken = self._pending.pop(correlation_id, None)
            resend = self._resend.pop(correlation_id, None)
        self._listeners.pop(correlation_id, None)
        return taken is not None or resend is not None

    # -- callbacks on the thread reading the connection --------------------------------

    def on_reply(self, delivery: Delivery) -> None:
        correlation_id = delivery.correlation_id or ""
        with self._lock:
            entry = self._pending.pop(correlation_id, None)
        if entry is None:
            listener = self._listeners.get(correlation_id)
            if listener is not None:
                listener(delivery)
                return
            log.debug("dropping a reply nobody waits for: %s", correlation_id)
            return
        # Learn from every reply, so that a method redeployed without
        # idempotent=True stops being retried.
        key = (entry.call.service, entry.call.method)
        if delivery.headers.get(protocol.HEADER_IDEMPOTENT) is True:
            self._idempotent_methods.add(key)
        else:
            self._idempotent_methods.discard(key)
        entry.waiter._deliver(delivery)

    def on_return(self, delivery: Delivery) -> None:
        with self._lock:
            entry = self._pending.pop(delivery.correlation_id or "", None)
        if entry is not None:
            waiter = entry.waiter
            waiter._fail(not_routed(waiter.service, waiter.label))

    def connection_lost(self, exc: BaseException) -> None:
        # Direct reply-to replies for these calls die with the channel: fail them now
        # rather than let the caller wait for its timeout, or keep the idempotent
        # ones to publish again once reconnected.
        error = BrokerError(
            f"connection to the broker lost while the call was in flight: {exc}"
        )
        now = time.time()
        failed: list[PendingCall] = []
        with self._lock:
            pending, self._pending = self._pending, {}
            for correlation_id, entry in pending.items():
                if self._retryable(entry) and entry.call.deadline > now:
                    entry.attempts += 1
                    self._resend[correlation_id] = entry
                else:
                    failed.append(entry)
        for entry in failed:
            entry.waiter._fail(error)

    def fail_all(self, exc: Exception) -> None:
        """Fail every call, waiting for a reply or to be sent again."""
        with self._lock:
            pending, self._pending = self._pending, {}
            waiting, self._resend = self._resend, {}
        for entry in [*pending.values(), *waiting.values()]:
            entry.waiter._fail(exc)

    def expire(self) -> None:
        """Fail the calls whose deadline passed: nobody may be waiting to notice."""
        now = time.time()
        with self._lock:
            expired = [
                self._pending.pop(correlation_id)
                for correlation_id, entry in list(self._pending.items())
                if entry.call.deadline < now
            ]
        for entry in expired:
            entry.waiter._fail(timed_out(entry.waiter.label))

    def _retryable(self, entry: PendingCall) -> bool:
        if entry.idempotent is not None:
            return entry.idempotent
        call = entry.call
        return (call.service, call.method) in self._idempotent_methods
