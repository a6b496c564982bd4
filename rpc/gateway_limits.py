"""Per-caller limits of the gateway: a token bucket of requests, and calls at once.

Each caller (an API token's name, or ``anonymous``) has its own bucket and its own
count of requests in progress, so one busy client cannot use up the gateway or the
services behind it for the others. I/O-free and single-threaded: the gateway runs
on one event loop, and times are whatever clock the caller reads, in seconds.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """``rate`` requests a second on average, in bursts of up to ``burst``."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.burst < 1:
            raise ValueError(
                "a rate limit needs a rate above 0 and a burst of 1 or more"
            )


class TokenBucket:
    """Up to ``burst`` tokens, refilled at ``rate`` a second; a request takes one."""

    __slots__ = ("_level", "_limit", "_updated")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._limit = limit
        self._level = float(limit.burst)
        self._updated = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        limit = self._limit
        elapsed = max(0.0, now - self._updated)
        self._level = min(float(limit.burst), self._level + elapsed * limit.rate)
        self._updated = now
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / limit.rate


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header for a wait: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))


@dataclasses.dataclass
class _Caller:
    bucket: TokenBucket | None
    in_progress: int = 0


class CallerLimits:
    """The buckets and in-progress counts of every caller seen so far.

    A caller's limits are those it was given (its token's own), else the defaults;
    None means no limit of that kind.
    """

    def __init__(self) -> None:
        self._callers: dict[str, _Caller] = {}

    def _caller(self, name: str, rate: RateLimit | None, now: float) -> _Caller:
        caller = self._callers.get(name)
        if caller is None:
            bucket = TokenBucket(rate, now) if rate is not None else None
            caller = self._callers[name] = _Caller(bucket)
        return caller

    def admit(
        self,
        name: str,
        *,
        rate: RateLimit | None,
        max_concurrent: int | None,
        now: float,
    ) -> tuple[str, float] | None:
        """Count a request of ``name`` in, or say why not: ``("rate", wait)`` or
        ``("concurrency", wait)``. A request counted in must be :meth:`release`\\ d."""
        caller = self._caller(name, rate, now)
        if max_concurrent is not None and caller.in_progress >= max_concurrent:
            return "concurrency", 1.0
        if caller.bucket is not None:
            wait = caller.bucket.take(now)
            if wait > 0:
                return "rate", wait
        caller.in_progress += 1
        return None

    def release(self, name: str) -> None:
        """A request of ``name`` that :meth:`admit` counted in has been answered."""
        caller = self._callers.get(name)
        if caller is not None and caller.in_progress > 0:
            caller.in_progress -= 1

    def in_progress(self, name: str) -> int:
        caller = self._callers.get(name)
        return caller.in_progress if caller is not None else 0
