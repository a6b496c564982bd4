"""An expensive square, cached: the classic Memcached example as a service.

Each square takes a millisecond to compute (it pretends to be costly), so callers
that ask again for a number already asked get it from the result cache instead.
Run it with cache servers configured (``RPC_CACHE_SERVERS=127.0.0.1:11211``):

    rpc run services.squares:Squares
"""

from __future__ import annotations

import time

from rpc import Cache, CachedResults, rpc

#: What one square pretends to cost, in seconds.
COST = 0.001


class Squares:
    name = "squares"
    cache = CachedResults()

    @rpc(idempotent=True, cache=Cache(ttl=600))
    def square(self, n: int) -> int:
        """``n * n``, after a millisecond of pretended work; cached for 10 minutes."""
        time.sleep(COST)
        return n * n

    @rpc(idempotent=True)
    def square_uncached(self, n: int) -> int:
        """The same work, never cached: what every call would cost without it."""
        time.sleep(COST)
        return n * n

    @rpc(idempotent=True)
    def forget(self, n: int) -> bool:
        """Drop the cached square of ``n``; True if one was cached."""
        return self.cache.invalidate("square", n)
