"""Services with cached methods, for the result cache's integration tests."""

from __future__ import annotations

import collections
import threading
import time

from rpc import Cache, CachedResults, rpc

RUNS: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()


def ran(method: str) -> int:
    with _lock:
        RUNS[method] += 1
        return RUNS[method]


def user_of(payload: dict[str, int]) -> dict[str, int]:
    return {"user_id": payload["id"]}


class Accounts:
    name = "accounts"
    cache = CachedResults()

    @rpc(
        idempotent=True,
        cache=Cache(ttl=300, invalidate_on=[("users", "users.updated", user_of)]),
    )
    def get_user(self, user_id: int) -> dict[str, int]:
        return {"id": user_id, "run": ran("get_user")}

    @rpc(idempotent=True)
    def rename(self, user_id: int) -> bool:
        """Stands for a write: drops the user's cached entry."""
        return self.cache.invalidate("get_user", user_id)

    @rpc(idempotent=True, cache=1)
    def brief(self, n: int) -> int:
        ran("brief")
        return n

    @rpc(idempotent=True, cache=60)
    def echo(self, text: str) -> str:
        ran("echo")
        return text

    @rpc(idempotent=True, cache=60)
    def blob(self, size: int) -> str:
        ran("blob")
        return "x" * size

    @rpc(idempotent=True, cache=300)
    def square(self, n: int) -> int:
        ran("square")
        return n * n

    @rpc(idempotent=True, cache=Cache(ttl=60, lease=10))
    def slow(self, n: int) -> int:
        ran("slow")
        time.sleep(0.5)
        return n
