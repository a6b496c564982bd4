"""`rpc run --processes N`: real worker processes, killed, restarted, replaced."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from rpc import ClusterProxy, Config
from services.compute import Compute
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.readme import code_blocks

FAULTY = "tests.integration.fault_services:Faulty"


@contextmanager
def rpc_run(
    broker_url: str, log: Path, *args: str, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`rpc run -v FAULTY *args` with its log in ``log``; stopped afterwards."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            rpc_command("-v", "run", FAULTY, *args),
            cwd=PROJECT_ROOT,
            env=project_env(broker_url, **env),
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in children_of(process):
                child.kill()
            process.kill()
            process.wait(timeout=10)


def children_of(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children()
    except psutil.NoSuchProcess:
        return []


def child_pids(process: subprocess.Popen[bytes]) -> set[int]:
    return {child.pid for child in children_of(process)}


def wait_for(what: str, check: Callable[[], object], timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def consuming(log: Path, count: int) -> Callable[[], bool]:
    """True once ``count`` children have said they are consuming."""
    return lambda: log.read_text().count("is consuming") >= count


def pid_in(marker: Path) -> Callable[[], int | None]:
    def read() -> int | None:
        text = marker.read_text() if marker.exists() else ""
        return int(text) if text.strip() else None

    return read


@pytest.fixture
def cluster(broker_url):
    with ClusterProxy(config=Config(broker_url=broker_url, default_timeout=90)) as c:
        yield c


def test_processes_serve_calls_from_separate_children(broker_url, cluster, tmp_path):
    log = tmp_path / "run.log"
    with rpc_run(broker_url, log, "--processes", "2", "--max-workers", "1") as run:
        wait_for("two consuming workers", consuming(log, 2))
        futures = [cluster.faulty.slow_whoami.call_async(0.3) for _ in range(8)]
        pids = {future.result() for future in futures}
        children = child_pids(run)
    assert len(children) == 2
    assert pids == children
    assert run.pid not in pids


def test_a_child_that_dies_is_restarted(broker_url, cluster, tmp_path):
    log = tmp_path / "run.log"
    with rpc_run(broker_url, log, "--processes", "2") as run:
        wait_for("two consuming workers", consuming(log, 2))
        before = child_pids(run)
        victim = min(before)
        psutil.Process(victim).kill()
        wait_for("a replacement", lambda: len(child_pids(run) - before) == 1)
        wait_for("three consuming workers", consuming(log, 3))
        after = child_pids(run)
        served = {cluster.faulty.slow_whoami(0.05) for _ in range(30)}
        assert run.poll() is None
    assert victim not in after
    assert len(after) == 2
    assert "signal SIGKILL" in log.read_text()
    assert served <= after


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_call_whose_worker_is_killed_is_answered_by_another(
    broker_url, cluster, tmp_path, queue_type
):
    log = tmp_path / "run.log"
    marker = tmp_path / "pid"
    args = ("--processes", "2", "--max-workers", "1")
    with rpc_run(broker_url, log, *args, RPC_QUEUE_TYPE=queue_type) as run:
        wait_for("two consuming workers", consuming(log, 2))
        future = cluster.faulty.hold.call_async(str(marker), 1.0)
        victim = wait_for("the call to start", pid_in(marker))
        assert victim in child_pids(run)
        marker.unlink()
        psutil.Process(victim).kill()
        answer = future.result(timeout=90)
    assert answer["pid"] != victim
    assert answer["redelivered"] is True
    assert answer["delivery_count"] == 2


STOP_SIGNALS = pytest.mark.parametrize(
    "stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)


@STOP_SIGNALS
def test_a_stop_signal_drains_every_child_and_exits_0(
    broker_url, cluster, tmp_path, stop
):
    log = tmp_path / "run.log"
    markers = [tmp_path / "first", tmp_path / "second"]
    with rpc_run(broker_url, log, "--processes", "2", "--max-workers", "1") as run:
        wait_for("two consuming workers", consuming(log, 2))
        children = child_pids(run)
        futures = [
            cluster.faulty.hold.call_async(str(marker), 2.0) for marker in markers
        ]
        for marker in markers:
            wait_for("both calls to start", pid_in(marker))
        run.send_signal(stop)
        answers = [future.result(timeout=90) for future in futures]
        code = run.wait(timeout=60)
    assert code == 0
    assert {answer["pid"] for answer in answers} == children
    assert not any(answer["redelivered"] for answer in answers)


@STOP_SIGNALS
def test_single_process_stop_signal_finishes_the_call_in_flight(
    broker_url, cluster, tmp_path, stop
):
    log = tmp_path / "run.log"
    marker = tmp_path / "pid"
    with rpc_run(broker_url, log) as run:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        future = cluster.faulty.hold.call_async(str(marker), 2.0)
        assert wait_for("the call to start", pid_in(marker)) == run.pid
        run.send_signal(signal.SIGHUP)  # no supervisor: ignored, not fatal
        wait_for("the SIGHUP", lambda: "SIGHUP ignored" in log.read_text())
        run.send_signal(stop)
        answer = future.result(timeout=90)
        code = run.wait(timeout=60)
    assert code == 0
    assert answer == {"pid": run.pid, "redelivered": False, "delivery_count": 1}


def test_sighup_replaces_every_child_without_losing_a_call(
    broker_url, cluster, tmp_path
):
    log = tmp_path / "run.log"
    with rpc_run(broker_url, log, "--processes", "2", "--max-workers", "2") as run:
        wait_for("two consuming workers", consuming(log, 2))
        old = child_pids(run)
        replaced = False

        def caller() -> list[int]:
            pids = []
            for _ in range(2000):  # bounded; stops once the reload is over
                pids.append(cluster.faulty.slow_whoami(0.02))
                if replaced:
                    break
            return pids

        with ThreadPoolExecutor(4) as pool:
            callers = [pool.submit(caller) for _ in range(4)]
            run.send_signal(signal.SIGHUP)
            wait_for("the reload", lambda: "reload done" in log.read_text(), 120)
            replaced = True
            served = [pid for future in callers for pid in future.result()]
        new = child_pids(run)
        assert run.poll() is None
    assert len(new) == 2
    assert not new & old
    assert set(served) & old
    assert set(served) & new
    assert log.read_text().count("did not drain") == 0
    # Each old worker's stop is told, not only the new ones' start.
    text = log.read_text()
    for pid in old:
        assert f"stopping the old process (pid {pid})" in text
        assert f"old process (pid {pid}) stopped" in text
    # And the stop that ended the test: the signal, each child's, the exit status.
    assert "SIGTERM: stopping 2 workers" in text
    assert text.count("faulty: stopped") >= 4  # two replaced, two stopped
    assert "every worker stopped; exiting with 0" in text


def test_a_crash_loop_is_restarted_with_growing_delays(tmp_path):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "run.log"
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    with rpc_run(url, log, "--processes", "1", RPC_CONNECT_TIMEOUT="0.2") as run:
        delays = wait_for(
            "four restarts",
            lambda: (
                (found := re.findall(r"restarting in ([\d.]+)s", log.read_text()))
                and len(found) >= 4
                and found
            ),
            120,
        )
        assert run.poll() is None
    assert [float(delay) for delay in delays[:4]] == [0.5, 1.0, 2.0, 4.0]


def test_the_readme_scaling_example_runs(broker_url, tmp_path):
    (script,) = code_blocks("Scaling out over processes", "sh")
    shim = tmp_path / "bin" / "rpc"  # `rpc` of this checkout, whatever is installed
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rpc "$@"\n')
    shim.chmod(0o755)
    env = project_env(broker_url)
    env["PATH"] = f"{shim.parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(Compute().compute(200000, 1)), '"pong"']
