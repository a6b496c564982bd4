"""The result cache on real Memcached servers (three private ones) and RabbitMQ."""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from click.testing import CliRunner
from pymemcache.client.base import Client

from rpc import ClusterProxy, Config, ResultCache, ServiceRunner
from rpc.cache.memcached import OUTAGE_ENDED, OUTAGE_STARTED
from rpc.cache.servers import LocalMemcached, parse_server
from rpc.cli import main
from tests.integration.cache_services import RUNS, Accounts


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    RUNS.clear()


@pytest.fixture
def config(broker_url: str, memcached_servers: LocalMemcached) -> Config:
    return Config(
        broker_url=broker_url,
        cache_servers=tuple(memcached_servers.addresses),
        max_workers=60,
    )


@pytest.fixture
def runner(config: Config) -> Iterator[ServiceRunner]:
    with ServiceRunner([Accounts], config) as runner:
        yield runner


@pytest.fixture
def cluster(runner: ServiceRunner, config: Config) -> Iterator[ClusterProxy]:
    with ClusterProxy(config=config) as proxy:
        yield proxy


def result_cache(runner: ServiceRunner) -> ResultCache:
    [cache] = [m for m in runner.middleware if isinstance(m, ResultCache)]
    return cache


def stored_keys(servers: LocalMemcached) -> list[bytes]:
    """The keys the three servers hold, read with memcached's own commands."""
    values = []
    for address in servers.addresses:
        client = Client(parse_server(address))
        try:
            for line in client.raw_command(b"lru_crawler metadump all", b"END").split(
                b"\n"
            ):
                if line.startswith(b"key="):
                    values.append(unquote_to_bytes(line.split()[0][4:]))
        finally:
            client.close()
    return values


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_hits_misses_and_the_counts(cluster, runner):
    assert cluster.accounts.get_user(7) == {"id": 7, "run": 1}
    assert cluster.accounts.get_user(user_id=7) == {"id": 7, "run": 1}
    assert cluster.accounts.get_user(8) == {"id": 8, "run": 2}
    stats = result_cache(runner).stats
    assert (stats.total("hit"), stats.total("miss"), stats.total("error")) == (1, 2, 0)


def test_entries_expire_after_their_ttl(cluster):
    cluster.accounts.brief(1)
    cluster.accounts.brief(1)
    assert RUNS["brief"] == 1
    # Memcached counts whole seconds: a 1 s entry lives one to two seconds.
    wait_until(lambda: cluster.accounts.brief(1) is not None and RUNS["brief"] == 2, 5)


def test_a_handler_invalidates_through_its_dependency(cluster):
    cluster.accounts.get_user(7)
    assert cluster.accounts.rename(7) is True
    assert cluster.accounts.get_user(7)["run"] == 2
    assert cluster.accounts.get_user(7)["run"] == 2


def test_an_operator_invalidates_from_the_shell(cluster, config):
    cluster.accounts.get_user(7)
    cli = CliRunner()
    arguments = ["--broker", config.broker_url]
    done = cli.invoke(
        main, ["cache", "invalidate", "accounts.get_user", "[7]", *arguments]
    )
    assert done.exit_code == 0, done.output
    assert done.output.startswith("invalidated rpc:accounts:get_user:v1:")
    again = cli.invoke(
        main, ["cache", "invalidate", "accounts.get_user", '{"user_id": 7}', *arguments]
    )
    assert again.exit_code == 0 and again.output.startswith("no entry for")
    assert cluster.accounts.get_user(7)["run"] == 2
    refused = cli.invoke(
        main, ["cache", "invalidate", "accounts.rename", "[7]", *arguments]
    )
    assert refused.exit_code == 1 and "does not cache 'rename'" in refused.output
    assert cluster.accounts.get_user(7)["run"] == 2  # rename did not run


def test_an_event_invalidates_the_entry_it_names(cluster):
    cluster.accounts.get_user(7)
    cluster.accounts.get_user(8)
    cluster.dispatch("users", "users.updated", {"id": 7})
    wait_until(lambda: cluster.accounts.get_user(7)["run"] == 3)
    assert cluster.accounts.get_user(8)["run"] == 2


def test_warming_fills_the_cache_before_traffic(cluster, config, tmp_path: Path):
    lines = [f"[{n}]" for n in range(30)] + ["", '{"n": 30}']
    args_file = tmp_path / "squares.jsonl"
    args_file.write_text("\n".join(lines) + "\n")
    done = CliRunner().invoke(
        main,
        [
            *("cache", "warm", "accounts.square", "--args-file", str(args_file)),
            *("--broker", config.broker_url),
        ],
    )
    assert done.exit_code == 0, done.output
    assert "31 calls of accounts.square cached, 0 failed" in done.output
    assert RUNS["square"] == 31
    assert [cluster.accounts.square(n) for n in range(31)] == [n * n for n in range(31)]
    assert RUNS["square"] == 31


def test_a_bad_args_file_is_refused_before_anything_is_sent(config, runner, tmp_path):
    args_file = tmp_path / "bad.jsonl"
    args_file.write_text("[1]\n[2\n")
    done = CliRunner().invoke(
        main,
        [
            *("cache", "warm", "accounts.square", "--args-file", str(args_file)),
            *("--broker", config.broker_url),
        ],
    )
    assert done.exit_code == 2 and "line 2" in done.output
    assert RUNS["square"] == 0


def test_a_key_of_ten_thousand_characters_is_hashed_and_hits(
    cluster, memcached_servers
):
    text = "k" * 10_000
    assert cluster.accounts.echo(text) == text
    assert cluster.accounts.echo(text=text) == text
    assert RUNS["echo"] == 1
    [key] = stored_keys(memcached_servers)
    assert key.startswith(b"rpc:accounts:echo:v1:sha256:") and len(key) < 250


def test_unicode_arguments_hit_their_own_entries(cluster):
    words = ["Zoë", "東京", "Zoe", "🙂 smile", "東京 "]
    assert [cluster.accounts.echo(w) for w in words] == words
    assert [cluster.accounts.echo(w) for w in words] == words
    assert RUNS["echo"] == len(words)


def test_a_value_of_two_megabytes_is_answered_not_stored_and_counted(
    cluster, runner, memcached_servers
):
    size = 2 * 1024 * 1024
    assert len(cluster.accounts.blob(size)) == size
    assert len(cluster.accounts.blob(size)) == size
    assert RUNS["blob"] == 2
    assert result_cache(runner).stats.total("too_large") == 2
    assert stored_keys(memcached_servers) == []


def test_fifty_concurrent_misses_across_two_workers_run_the_handler_once(
    config, runner
):
    with (
        ServiceRunner([Accounts], config) as second,
        ClusterProxy(config=config) as cluster,
    ):
        futures = [cluster.accounts.slow.call_async(5) for _ in range(50)]
        assert [future.result(timeout=30) for future in futures] == [5] * 50
        served = [result_cache(r).stats for r in (runner, second)]
    assert RUNS["slow"] == 1
    assert sum(stats.total("hit") for stats in served) == 49
    assert all(stats.total() > 0 for stats in served)  # both workers took calls


@pytest.mark.timeout(90)
def test_killing_one_of_three_servers_during_5000_calls_fails_none(
    cluster, runner, memcached_servers, caplog
):
    cache = result_cache(runner)
    backend = cache.backend
    rng = random.Random(16)
    numbers = [rng.randint(0, 600) for _ in range(5000)]
    killed = memcached_servers.addresses[0]
    windows: list[float] = []
    before = (0, 0)
    kill_at = 2000
    stop_at = time.monotonic() + 60

    with caplog.at_level(logging.WARNING, logger="rpc.cache.memcached"):
        results = cluster.accounts.square.map(numbers, max_in_flight=8)
        for index, result in enumerate(results, start=1):
            assert result == numbers[index - 1] ** 2
            if index == kill_at:
                memcached_servers.kill(0)
            if index % 500 == 0:
                hits, total = cache.stats.total("hit"), cache.stats.total()
                windows.append((hits - before[0]) / (total - before[1]))
                before = (hits, total)
            assert time.monotonic() < stop_at

    print("hit ratio per 500 calls:", [round(w, 2) for w in windows])
    assert index == 5000  # every call answered, none failed
    assert parse_server(killed) in backend.down
    assert all(
        backend.server_for(f"user:{n}") != parse_server(killed) for n in range(200)
    )
    # Before the kill the cache had learnt most numbers; the kill loses a third
    # of them, and the two others learn them again.
    after_kill = windows[kill_at // 500]
    assert windows[kill_at // 500 - 1] > 0.6
    assert after_kill < windows[kill_at // 500 - 1]
    assert windows[-1] > after_kill and windows[-1] > 0.8
    assert cache.stats.total("error") <= 20
    outages = [r for r in caplog.records if r.msg == OUTAGE_STARTED]
    assert len(outages) == 1  # once per outage, not once per call
    assert not [r for r in caplog.records if r.msg == OUTAGE_ENDED]


def test_a_server_that_comes_back_takes_its_keys_again(
    cluster, runner, memcached_servers, caplog
):
    backend = result_cache(runner).backend
    backend._retry_after = 0.2  # type: ignore[union-attr]
    memcached_servers.kill(1)
    for n in range(50):
        cluster.accounts.square(n)
    assert len(backend.down) == 1  # type: ignore[union-attr]
    memcached_servers.start_one(1)
    with caplog.at_level(logging.WARNING, logger="rpc.cache.memcached"):
        wait_until(lambda: cluster.accounts.square(1) == 1 and not backend.down)  # type: ignore[union-attr]
    assert [r for r in caplog.records if r.msg == OUTAGE_ENDED]
    owners = {backend.server_for(f"user:{n}") for n in range(100)}  # type: ignore[union-attr]
    assert len(owners) == 3


def test_a_server_too_slow_to_answer_is_a_miss_then_left_out(
    broker_url, memcached_servers
):
    # Accepts connections (the kernel does, into its backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        slow = ("127.0.0.1", silent.getsockname()[1])
        config = Config(
            broker_url=broker_url,
            cache_servers=(f"{slow[0]}:{slow[1]}", *memcached_servers.addresses[:2]),
            cache_timeout=0.2,
        )
        with (
            ServiceRunner([Accounts], config) as runner,
            ClusterProxy(config=config) as cluster,
        ):
            started = time.monotonic()
            numbers = list(range(60))
            assert [cluster.accounts.square(n) for n in numbers] == [
                n * n for n in numbers
            ]
            assert [cluster.accounts.square(n) for n in numbers] == [
                n * n for n in numbers
            ]
            took = time.monotonic() - started
            cache = result_cache(runner)
    assert cache.backend.down == [slow]  # type: ignore[union-attr]
    assert 1 <= cache.stats.total("error") <= 2  # the call that waited, and no other
    assert cache.stats.total("hit") >= 58
    assert took < 10
