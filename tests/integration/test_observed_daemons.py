"""`rpc run --log-format json` and `rpc status`, as an operator runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rpc import ClusterProxy, Config, RemoteError
from rpc.middleware import ClientCall, Middleware
from rpc.observability.status import NO_WORKERS
from tests.integration.daemons import (
    PROJECT_ROOT,
    daemons,
    project_env,
    rpc_command,
    wait_until_served,
)
from tests.integration.metrics_scrape import free_port

COUNTED = "tests.integration.observed_services:Counted"
TRACE = "0af7651916cd43dd8448eb211c80319c"


class SendsTrace(Middleware):
    """A caller in a trace: every message carries its traceparent."""

    def before_send(self, call: ClientCall) -> None:
        call.headers["traceparent"] = f"00-{TRACE}-b7ad6b7169203331-01"


def rpc(
    broker_url: str, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        rpc_command(*args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_json_logs_have_the_call_fields_and_one_traceback_per_error(
    broker_url, tmp_path: Path
):
    log = tmp_path / "worker.log"
    env = project_env(broker_url, RPC_SLOW_CALL_SECONDS="0.05")
    with log.open("wb") as output:
        worker = subprocess.Popen(
            rpc_command("run", COUNTED, "--log-format", "json", "--tracing"),
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    try:
        config = Config(broker_url=broker_url, default_timeout=30)
        with ClusterProxy(config=config, middleware=[SendsTrace()]) as cluster:
            wait_until_served(cluster, "counted", "pause", (0,))
            with pytest.raises(RemoteError):
                cluster.counted.fail()
            cluster.counted.pause(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    lines = [
        json.loads(line) for line in log.read_text().splitlines() if line[:1] == "{"
    ]
    assert lines and all(
        {"time", "level", "logger", "message"} <= set(e) for e in lines
    )
    errors = [e for e in lines if "counted.fail failed" in e["message"]]
    assert len(errors) == 1  # logged once, on the worker
    (error,) = errors
    assert error["level"] == "WARNING"
    assert "Traceback" in error["exception"]
    assert "ValueError: asked to fail" in error["exception"]
    assert (error["service"], error["method"]) == ("counted", "fail")
    assert error["correlation_id"] and error["trace_id"] == TRACE
    (slow,) = [e for e in lines if e["logger"] == "rpc.observability.logs"]
    assert slow["level"] == "WARNING"
    assert (slow["service"], slow["method"], slow["outcome"]) == (
        "counted",
        "pause",
        "ok",
    )
    assert slow["duration_ms"] >= 100
    assert slow["correlation_id"] and slow["trace_id"] == TRACE


def test_status_shows_services_workers_and_queues(broker_url):
    with daemons(broker_url, [COUNTED]) as (worker,):
        with ClusterProxy(config=Config(broker_url=broker_url)) as cluster:
            wait_until_served(cluster, "counted", "pause", (0,))
            for number in range(4):
                cluster.counted.ok(number)
            with pytest.raises(RemoteError):
                cluster.counted.fail()
        listing = rpc(broker_url, "status", "--json")
        assert listing.returncode == 0, listing.stderr
        (counted,) = json.loads(listing.stdout)["services"]
        assert counted["service"] == "counted"
        assert {"ok", "fail", "pause"} <= set(counted["methods"])
        (row,) = counted["workers"]
        assert row["pid"] == worker.pid
        assert (row["served"], row["errors"], row["in_flight"]) == (6, 1, 0)
        assert row["version"] == "0.1.0"
        assert counted["queue"] == {
            "name": "rpc-counted",
            "messages": 0,
            "consumers": 1,
        }
        assert counted["dead_letters"]["messages"] == 0
        table = rpc(broker_url, "status", "counted")
        assert table.returncode == 0
        assert f":{worker.pid}" in table.stdout
        assert "queue: 0 ready, 1 consumers" in table.stdout
        watched = rpc(
            broker_url, "status", "--watch", "--count", "2", "--interval", "0.2"
        )
        assert watched.returncode == 0
        assert watched.stdout.count("CALLS/S") == 2
        assert rpc(broker_url, "status", "nobody").stdout.count(NO_WORKERS) == 1


def test_status_watch_stops_on_ctrl_c(broker_url):
    watcher = subprocess.Popen(
        rpc_command("status", "--watch", "--interval", "0.2"),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert "WORKER" in watcher.stdout.readline()
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(timeout=10)
        if watcher.stdout is not None:
            watcher.stdout.close()


def test_status_without_workers_says_so(broker_url):
    result = rpc(broker_url, "status")
    assert result.returncode == 0
    assert NO_WORKERS in result.stdout


def test_status_with_the_broker_down_is_one_line_and_exit_2(broker_url):
    down = f"amqp://guest:secret@127.0.0.1:{free_port()}//"
    started = time.monotonic()
    result = rpc(broker_url, "status", "--broker", down, RPC_CONNECT_TIMEOUT="1")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the broker at 127.0.0.1:")
    assert "secret" not in line
    assert result.stdout == ""
    assert time.monotonic() - started < 30
