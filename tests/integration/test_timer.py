"""A cluster-wide ``@timer`` on RabbitMQ: one of two daemons fires it, and the
other takes over once the first is killed; no two ticks ever overlap."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rpc import ClusterProxy, Config
from tests.integration.daemons import (
    PROJECT_ROOT,
    project_env,
    rpc_command,
    stop,
    wait_until_served,
)
from tests.integration.stop_services import LEDGER_DIR

TICKING = "tests.integration.timer_services:Ticking"


@pytest.fixture
def cluster(broker_url) -> Iterator[ClusterProxy]:
    with ClusterProxy(config=Config(broker_url=broker_url)) as proxy:
        yield proxy


def start_daemon(broker_url: str, ledger: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        rpc_command("run", TICKING),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url, **{LEDGER_DIR: str(ledger)}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def ticks(ledger: Path) -> list[tuple[int, str, float]]:
    """(pid, "start" or "end", time) for every line the ticks wrote."""
    path = ledger / "ticks.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        pid, what, when = line.split()
        found.append((int(pid), what, float(when)))
    return found


def wait_ticks(ledger: Path, count: int, *, pid: int, timeout: float = 30) -> bool:
    """Wait until ``pid`` has started ``count`` ticks."""
    deadline = time.monotonic() + timeout
    while (
        sum(1 for p, what, _ in ticks(ledger) if p == pid and what == "start") < count
    ):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def runs(
    found: list[tuple[int, str, float]], killed: dict[int, float]
) -> list[tuple[float, float, int]]:
    """(start, end, pid) of each tick; one cut short by a kill ends at the kill."""
    open_runs: dict[int, float] = {}
    result = []
    for pid, what, when in found:
        if what == "start":
            open_runs[pid] = when
        else:
            result.append((open_runs.pop(pid), when, pid))
    for pid, started in open_runs.items():
        result.append((started, killed[pid], pid))
    return sorted(result)


@contextmanager
def two_daemons(
    broker_url: str, cluster: ClusterProxy, ledger: Path
) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """A daemon that holds the timer (it has ticked), then a second one serving."""
    first = start_daemon(broker_url, ledger)
    started = [first]
    try:
        wait_until_served(cluster, "ticking", "ping", ())
        assert wait_ticks(ledger, 2, pid=first.pid)
        second = start_daemon(broker_url, ledger)
        started.append(second)
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while second.pid not in pids and time.monotonic() < deadline:
            pids |= {cluster.ticking.ping.call_async().result() for _ in range(8)}
        assert second.pid in pids
        yield first, second
    finally:
        stop(started)


def assert_no_overlap(found: list[tuple[float, float, int]]) -> None:
    for (_, ended, _), (started, _, _) in itertools.pairwise(found):
        assert started >= ended


def test_one_daemon_fires_and_another_takes_over_when_it_is_killed(
    broker_url, cluster, tmp_path
):
    with two_daemons(broker_url, cluster, tmp_path) as (first, second):
        # Both serve calls now; the timer stays with its holder.
        assert wait_ticks(tmp_path, 8, pid=first.pid)
        assert {pid for pid, _, _ in ticks(tmp_path)} == {first.pid}
        first.kill()
        first.wait(timeout=10)
        killed = {first.pid: time.time()}
        assert wait_ticks(tmp_path, 3, pid=second.pid, timeout=30)
    found = runs(ticks(tmp_path), killed)
    assert {pid for _, _, pid in found} == {first.pid, second.pid}
    assert_no_overlap(found)


def test_a_daemon_that_stops_hands_the_timer_on(broker_url, cluster, tmp_path):
    with two_daemons(broker_url, cluster, tmp_path) as (first, second):
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        assert wait_ticks(tmp_path, 3, pid=second.pid, timeout=30)
    assert_no_overlap(runs(ticks(tmp_path), {}))
