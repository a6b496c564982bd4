"""An in-memory cache sharded over its workers: each key lives in one worker process.

Without sharding, a ``get`` would land on any worker and miss what another one
stored. ``shard_by="key"`` sends every call for a key to the worker that owns it.
"""

from __future__ import annotations

import threading

from rpc import rpc

_lock = threading.Lock()
_values: dict[str, object] = {}  # this worker's share of the keys


class Cache:
    name = "cache"

    @rpc(shard_by="key")
    def put(self, key: str, value: object) -> None:
        """Store ``value`` under ``key``."""
        with _lock:
            _values[key] = value

    @rpc(shard_by="key")
    def get(self, key: str) -> object:
        """The value stored under ``key``, or None."""
        with _lock:
            return _values.get(key)

    @rpc
    def size(self) -> int:
        """Keys held by the worker that answers."""
        with _lock:
            return len(_values)
