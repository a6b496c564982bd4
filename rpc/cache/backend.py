"""The small interface the result cache needs from a store, and an in-memory one.

Memcached (:class:`rpc.cache.memcached.MemcachedBackend`) is the store in
production; :class:`MemoryBackend` behaves the same inside one process, for tests
that should not need servers. Values are bytes: the cache stores JSON, never pickle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from rpc.errors import CacheUnavailableError

#: Memcached's default largest item (``-I 1m``): key, value and its header.
DEFAULT_MAX_ITEM_BYTES = 1024 * 1024
#: Room Memcached takes per item besides key and value (its item header).
ITEM_OVERHEAD = 64


class CacheBackend(Protocol):
    """Where cached results live. Every method raises CacheUnavailableError when
    the store cannot be reached, and nothing else."""

    #: The largest item the store keeps, key and value included.
    max_item_bytes: int

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]: ...

    def set(self, key: str, value: bytes, expire: int) -> bool: ...

    def add(self, key: str, value: bytes, expire: int) -> bool:
        """Store only if ``key`` is absent: True if this call stored it."""

    def delete(self, key: str) -> bool:
        """Drop ``key``: True if it was there."""

    def close(self) -> None: ...


def fits(backend: CacheBackend, key: str, value: bytes) -> bool:
    """True when the store would keep this item (Memcached refuses larger ones)."""
    return len(key) + len(value) + ITEM_OVERHEAD <= backend.max_item_bytes


class MemoryBackend:
    """A cache in this process's memory, behind the interface of the real one.

    Entries expire as Memcached's do; ``add`` is atomic. Set :attr:`available` to
    False to make every operation fail as an unreachable server would.
    """

    def __init__(
        self,
        *,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_item_bytes = max_item_bytes
        self.available = True
        self._clock = clock
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        with self._lock:
            found = {key: self._live(key) for key in keys}
        return {key: value for key, value in found.items() if value is not None}

    def set(self, key: str, value: bytes, expire: int) -> bool:
        with self._lock:
            self._check()
            if not fits(self, key, value):
                return False
            self._entries[key] = (bytes(value), self._clock() + expire)
            return True

    def add(self, key: str, value: bytes, expire: int) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._entries[key] = (bytes(value), self._clock() + expire)
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            present = self._live(key) is not None
            self._entries.pop(key, None)
            return present

    def close(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(self._live(key) is not None for key in list(self._entries))

    def _check(self) -> None:
        if not self.available:
            raise CacheUnavailableError("the in-memory cache is switched off")

    def _live(self, key: str) -> bytes | None:
        self._check()
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return value
