"""Memcached servers as one cache, through pymemcache's HashClient.

Keys are spread over the servers by rendezvous hashing, so adding or losing one
server moves only the keys it owns. A server that fails (refused, reset, or slower
than ``timeout``) is taken out at once: its keys go to the others, and the call
that hit the failure is a miss. It is tried again after ``retry_after`` seconds,
doubling while it keeps failing up to ``max_retry_after``. Each outage is logged
once when it starts and once when it ends, never once per call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError

from rpc.cache.backend import DEFAULT_MAX_ITEM_BYTES
from rpc.cache.servers import parse_server
from rpc.errors import CacheUnavailableError, ConfigError

log = logging.getLogger(__name__)

#: Seconds an operation on one server may take before it counts as failed.
DEFAULT_TIMEOUT = 0.25
RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 30.0
#: The server is left in the ring with its next failure; no retry of its own.
_NEVER = 10**9

OUTAGE_STARTED = (
    "memcached %s does not answer: its keys go to the other servers until it does "
    "(next try in %.1fs)"
)
OUTAGE_ENDED = "memcached %s answers again after %.1fs: its keys come back to it"

_T = TypeVar("_T")


class _BytesOnly:
    """pymemcache's serde for bytes in, bytes out: flags are ignored on the way
    back, so nothing stored by another client is ever unpickled."""

    def serialize(self, key: Any, value: Any) -> tuple[bytes, int]:
        if not isinstance(value, bytes):
            raise TypeError("the result cache stores bytes")
        return value, 0

    def deserialize(self, key: Any, value: Any, flags: int) -> Any:
        return value


class _Outage:
    __slots__ = ("address", "retry_after", "retry_at", "started")

    def __init__(self, address: tuple[str, int], retry_after: float) -> None:
        self.address = address
        self.started = time.monotonic()
        self.retry_after = retry_after
        self.retry_at = self.started + retry_after


class _Ring(HashClient):  # type: ignore[misc]
    """HashClient that tells its owner when it takes a server out.

    Two threads failing on one server at once would both take it out; the second
    is a no-op here, where HashClient would raise from its hash ring.
    """

    on_removed: Callable[[tuple[str, int]], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._ring_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def remove_server(self, server: Any, port: Any = None) -> None:
        address = (server, port) if port is not None else tuple(server)
        with self._ring_lock:
            key = self._make_client_key(address)
            if key not in self.hasher.nodes:
                self._failed_clients.pop(server, None)
                return
            self._failed_clients.setdefault(server, {})
            super().remove_server(server, port)
        if self.on_removed is not None:
            self.on_removed((str(address[0]), int(address[1])))

    def add_server(self, server: Any, port: Any = None) -> None:
        address = (server, port) if port is not None else server
        with self._ring_lock:
            key = self._make_client_key(address)
            stale = self.clients.get(key)
            if key in getattr(self.hasher, "nodes", ()):
                return
            super().add_server(server, port)
        if stale is not None:
            # The broken connections of before the outage.
            stale.close()


class MemcachedBackend:
    """The result cache's store on one or more Memcached servers."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_after: float = RETRY_AFTER,
        max_retry_after: float = MAX_RETRY_AFTER,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        if not servers:
            raise ConfigError("cache_servers: give at least one host:port")
        self.addresses = [parse_server(server) for server in servers]
        self.max_item_bytes = max_item_bytes
        self.timeout = timeout
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._outages: dict[tuple[str, int], _Outage] = {}
        self._lock = threading.Lock()
        self._client = _Ring(
            self.addresses,
            serde=_BytesOnly(),
            connect_timeout=timeout,
            timeout=timeout,
            # Out at the first failure; we bring it back, with a back-off.
            retry_attempts=0,
            dead_timeout=_NEVER,
            use_pooling=True,
            ignore_exc=False,
            default_noreply=False,
        )
        self._client.on_removed = self._removed

    # -- the CacheBackend interface ------------------------------------------------

    def get(self, key: str) -> bytes | None:
        value = self._run(lambda: self._client.get(key))
        return value if isinstance(value, bytes) else None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        found = self._run(lambda: self._client.get_many(list(keys)))
        return {
            key: value
            for key, value in (found or {}).items()
            if isinstance(value, bytes)
        }

    def set(self, key: str, value: bytes, expire: int) -> bool:
        return bool(self._run(lambda: self._client.set(key, value, expire=expire)))

    def add(self, key: str, value: bytes, expire: int) -> bool:
        return bool(self._run(lambda: self._client.add(key, value, expire=expire)))

    def delete(self, key: str) -> bool:
        return bool(self._run(lambda: self._client.delete(key)))

    def close(self) -> None:
        self._client.close()

    # -- which servers are in ------------------------------------------------------

    @property
    def down(self) -> list[tuple[str, int]]:
        """Servers taken out, waiting for their retry."""
        with self._lock:
            return list(self._outages)

    def server_for(self, key: str) -> tuple[str, int] | None:
        """The server that holds ``key`` now (None when every one is out)."""
        node = self._client.hasher.get_node(key)
        for address in self.addresses:
            if node == f"{address[0]}:{address[1]}":
                return address
        return None

    def _run(self, operation: Callable[[], _T]) -> _T:
        if self._outages:
            self._retry_due()
        try:
            return operation()
        except Exception as exc:
            # Whatever the client raises (a refused or reset connection, a timeout,
            # a protocol error), the cache must never fail the call that asked.
            raise CacheUnavailableError(
                f"memcached: {exc or type(exc).__name__}"
            ) from exc

    def _removed(self, address: tuple[str, int]) -> None:
        """HashClient took the server at ``address`` out after a failure."""
        with self._lock:
            outage = self._outages.get(address)
            if outage is None:
                outage = _Outage(address, self._retry_after)
                self._outages[address] = outage
                first = True
            else:
                # Failed again after its retry: wait twice as long next time.
                outage.retry_after = min(outage.retry_after * 2, self._max_retry_after)
                outage.retry_at = time.monotonic() + outage.retry_after
                first = False
        if first:
            log.warning(OUTAGE_STARTED, _label(address), outage.retry_after)

    def _retry_due(self) -> None:
        """Probe the servers whose back-off is over; put back those that answer."""
        now = time.monotonic()
        with self._lock:
            due = [o for o in self._outages.values() if o.retry_at <= now]
            for outage in due:
                # One caller probes; the others go on without the server meanwhile.
                outage.retry_at = now + outage.retry_after
        for outage in due:
            if self._answers(outage.address):
                with self._lock:
                    self._outages.pop(outage.address, None)
                self._client.add_server(*outage.address)
                log.warning(
                    OUTAGE_ENDED,
                    _label(outage.address),
                    time.monotonic() - outage.started,
                )
            else:
                with self._lock:
                    outage.retry_after = min(
                        outage.retry_after * 2, self._max_retry_after
                    )
                    outage.retry_at = time.monotonic() + outage.retry_after

    def _answers(self, address: tuple[str, int]) -> bool:
        probe = Client(address, connect_timeout=self.timeout, timeout=self.timeout)
        try:
            probe.version()
            return True
        except (OSError, MemcacheError):
            return False
        finally:
            probe.close()


def _label(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
