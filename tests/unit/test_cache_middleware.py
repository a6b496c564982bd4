"""The result cache on a worker, in memory: hits, misses, invalidation, stampedes."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from rpc import (
    Cache,
    CachedResults,
    ClusterProxy,
    Config,
    RemoteError,
    ResultCache,
    ServiceRunner,
    rpc,
)
from rpc.cache.commands import CacheCommand
from rpc.protocol import CACHE_INVALIDATE, CACHE_REFRESH
from rpc.testing import MemoryBackend
from services.greeter import Greeter

RUNS: collections.Counter[str] = collections.Counter()
_runs_lock = threading.Lock()


def ran(method: str) -> None:
    with _runs_lock:
        RUNS[method] += 1


def by_id(payload):
    return {"user_id": payload["id"]}


class Profiles:
    name = "profiles"
    cache = CachedResults()

    @rpc(
        idempotent=True,
        cache=Cache(ttl=60, invalidate_on=[("accounts", "accounts.updated", by_id)]),
    )
    def profile(self, user_id: int, verbose: bool = False) -> dict[str, object]:
        ran("profile")
        if user_id < 0:
            raise ValueError("no such user")
        return {"id": user_id, "verbose": verbose, "run": RUNS["profile"]}

    @rpc(idempotent=True)
    def rename(self, user_id: int) -> bool:
        return self.cache.invalidate("profile", user_id)

    @rpc(idempotent=True, cache=60)
    def blob(self, size: int) -> str:
        ran("blob")
        return "x" * size

    @rpc(idempotent=True, cache=Cache(ttl=60, lease=5))
    def slow(self, n: int) -> int:
        ran("slow")
        time.sleep(0.3)
        return n


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    RUNS.clear()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> MemoryBackend:
    return MemoryBackend(max_item_bytes=64 * 1024, clock=clock)


@pytest.fixture
def result_cache(backend: MemoryBackend) -> ResultCache:
    return ResultCache(backend)


@pytest.fixture
def runner(rpc_config: Config, result_cache: ResultCache) -> Iterator[ServiceRunner]:
    runner = ServiceRunner(
        [Profiles], rpc_config.replace(max_workers=60), middleware=[result_cache]
    )
    with runner:
        yield runner


@pytest.fixture
def proxy(runner: ServiceRunner, rpc_config: Config) -> Iterator[ClusterProxy]:
    with ClusterProxy(config=rpc_config) as cluster:
        yield cluster


def counts(result_cache: ResultCache) -> dict[str, int]:
    return {
        result: result_cache.stats.total(result)
        for result in ("hit", "miss", "error", "too_large")
    }


def test_a_hit_skips_the_handler_whichever_way_the_arguments_came(proxy, result_cache):
    first = proxy.profiles.profile(7)
    assert proxy.profiles.profile(user_id=7) == first
    assert proxy.profiles.profile(7, verbose=False) == first
    assert RUNS["profile"] == 1
    assert proxy.profiles.profile(7, verbose=True)["run"] == 2
    assert counts(result_cache) == {"hit": 2, "miss": 2, "error": 0, "too_large": 0}
    assert result_cache.stats.snapshot()[("profiles", "profile", "hit")] == 2


def test_errors_are_never_cached(proxy, result_cache):
    for _ in range(2):
        with pytest.raises(RemoteError, match="no such user"):
            proxy.profiles.profile(-1)
    assert RUNS["profile"] == 2
    assert counts(result_cache)["hit"] == 0


def test_entries_expire_after_their_ttl(proxy, clock):
    proxy.profiles.profile(7)
    clock.now += 59
    proxy.profiles.profile(7)
    assert RUNS["profile"] == 1
    clock.now += 2
    proxy.profiles.profile(7)
    assert RUNS["profile"] == 2


def test_a_handler_invalidates_through_its_dependency(proxy):
    proxy.profiles.profile(7)
    assert proxy.profiles.rename(7) is True
    assert proxy.profiles.rename(7) is False  # nothing left to drop
    proxy.profiles.profile(user_id=7)
    assert RUNS["profile"] == 2


def test_an_event_invalidates_the_entry_its_key_function_names(proxy, backend):
    proxy.profiles.profile(7)
    proxy.profiles.profile(8)
    proxy.dispatch("accounts", "accounts.updated", {"id": 7})
    deadline = time.monotonic() + 10
    while len(backend) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(backend) == 1
    proxy.profiles.profile(8)
    proxy.profiles.profile(7)
    assert RUNS["profile"] == 3  # 7 twice, 8 once


def test_the_invalidate_header_drops_an_entry_without_running_the_handler(
    proxy, rpc_config
):
    proxy.profiles.profile(7)
    with ClusterProxy(
        config=rpc_config, middleware=[CacheCommand(CACHE_INVALIDATE)]
    ) as operator:
        answer = operator.profiles.profile(user_id=7)
        assert answer["deleted"] is True
        assert answer["key"] == 'rpc:profiles:profile:v1:{"user_id":7,"verbose":false}'
        assert operator.profiles.profile(7)["deleted"] is False
    assert RUNS["profile"] == 1
    proxy.profiles.profile(7)
    assert RUNS["profile"] == 2


def test_the_refresh_header_runs_the_handler_and_replaces_the_entry(proxy, rpc_config):
    assert proxy.profiles.profile(7)["run"] == 1
    with ClusterProxy(
        config=rpc_config, middleware=[CacheCommand(CACHE_REFRESH)]
    ) as operator:
        assert operator.profiles.profile(7)["run"] == 2
    assert proxy.profiles.profile(7)["run"] == 2  # the refreshed entry
    assert RUNS["profile"] == 2


def test_a_result_too_large_to_store_is_answered_and_counted(proxy, result_cache):
    big = 70 * 1024
    assert len(proxy.profiles.blob(big)) == big
    assert len(proxy.profiles.blob(big)) == big
    assert RUNS["blob"] == 2
    assert counts(result_cache)["too_large"] == 2
    proxy.profiles.blob(10)
    proxy.profiles.blob(10)
    assert RUNS["blob"] == 3


def test_a_cache_that_is_down_never_fails_a_call(proxy, backend, result_cache):
    backend.available = False
    assert proxy.profiles.profile(7)["id"] == 7
    assert proxy.profiles.profile(7)["id"] == 7
    assert proxy.profiles.rename(7) is False
    assert RUNS["profile"] == 2
    assert counts(result_cache)["error"] == 2
    backend.available = True
    proxy.profiles.profile(7)
    proxy.profiles.profile(7)
    assert RUNS["profile"] == 3


def test_fifty_concurrent_misses_run_the_handler_once(proxy, result_cache):
    futures = [proxy.profiles.slow.call_async(1) for _ in range(50)]
    assert [future.result(timeout=30) for future in futures] == [1] * 50
    assert RUNS["slow"] == 1
    assert counts(result_cache) == {"hit": 49, "miss": 1, "error": 0, "too_large": 0}


def test_casts_bypass_the_cache(proxy, runner, backend):
    proxy.profiles.profile.cast(9)
    deadline = time.monotonic() + 10
    while RUNS["profile"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert RUNS["profile"] == 1 and len(backend) == 0


def test_a_runner_without_cached_methods_adds_no_middleware(rpc_config):
    runner = ServiceRunner([Greeter], rpc_config)
    assert runner.middleware == ()
    assert runner._invoker._chain is None  # the call path checks one attribute


def test_cached_methods_without_servers_run_uncached_and_say_so(rpc_config, caplog):
    with caplog.at_level(logging.WARNING, logger="rpc.cache.middleware"):
        runner = ServiceRunner([Profiles], rpc_config)
    assert "no cache_servers" in caplog.text
    [result_cache] = runner.middleware
    assert isinstance(result_cache, ResultCache) and result_cache.backend is None
    with runner, ClusterProxy(config=rpc_config) as proxy:
        proxy.profiles.profile(7)
        proxy.profiles.profile(7)
        assert proxy.profiles.rename(7) is False
    assert RUNS["profile"] == 2


def test_invalidating_an_uncached_method_or_with_wrong_arguments_is_a_mistake(
    runner, result_cache
):
    with pytest.raises(ValueError, match="not a cached method"):
        result_cache.invalidate("profiles", "rename", [7], {})
    with pytest.raises(TypeError):
        result_cache.invalidate("profiles", "profile", [], {"nobody": 1})


def test_a_worker_with_metrics_counts_cache_lookups_in_its_registry(
    rpc_config: Config, result_cache: ResultCache
):
    from prometheus_client import CollectorRegistry

    from rpc.observability.metrics import RpcMetrics, ServerMetrics

    registry = CollectorRegistry()
    observer = ServerMetrics(RpcMetrics.of(registry))
    runner = ServiceRunner(
        [Profiles], rpc_config, middleware=[result_cache], observer=observer
    )
    with runner, ClusterProxy(config=rpc_config) as cluster:
        cluster.profiles.profile(1)
        cluster.profiles.profile(1)
        cluster.profiles.profile(user_id=2)

    def sample(result: str) -> float | None:
        return registry.get_sample_value(
            "rpc_cache_requests_total",
            {"service": "profiles", "method": "profile", "result": result},
        )

    assert sample("miss") == 2
    assert sample("hit") == 1
    assert counts(result_cache)["hit"] == 1  # the middleware's own count still holds
