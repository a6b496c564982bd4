"""Counts of cache lookups, by service, method and result, for metrics to read.

Each call of a cached method counts once: ``hit`` (answered from the cache),
``miss`` (the handler ran), ``error`` (the cache could not be asked: the handler
ran) or ``too_large`` (the handler ran, and its result was too big to store).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

HIT = "hit"
MISS = "miss"
ERROR = "error"
TOO_LARGE = "too_large"
RESULTS = (HIT, MISS, ERROR, TOO_LARGE)


class CacheStats:
    """Thread-safe counters: ``rpc_cache_requests_total{service,method,result}``."""

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._lock = threading.Lock()
        #: Told of every count as well: the worker's metrics, when it has them.
        self.listener: Callable[[str, str, str], None] | None = None

    def count(self, service: str, method: str, result: str) -> None:
        with self._lock:
            self._counts[service, method, result] += 1
        listener = self.listener
        if listener is not None:
            listener(service, method, result)

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        """Every ``(service, method, result)`` seen so far, with its count."""
        with self._lock:
            return dict(self._counts)

    def total(
        self,
        result: str | None = None,
        *,
        service: str | None = None,
        method: str | None = None,
    ) -> int:
        """The sum of the counts that match every name given."""
        return sum(
            count
            for (s, m, r), count in self.snapshot().items()
            if (result is None or r == result)
            and (service is None or s == service)
            and (method is None or m == method)
        )

    def hit_ratio(
        self, *, service: str | None = None, method: str | None = None
    ) -> float:
        """Hits over all lookups counted (0.0 before the first)."""
        total = self.total(service=service, method=method)
        hits = self.total(HIT, service=service, method=method)
        return hits / total if total else 0.0
