"""`rpc run --metrics-port`: exact counts on /metrics, alone and under a supervisor."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry

from rpc import (
    ClusterProxy,
    Config,
    InvalidArgumentsError,
    MethodNotFoundError,
    RemoteError,
)
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.integration.metrics_scrape import (
    Samples,
    free_port,
    matching,
    value,
    wait_for_metrics,
)
from tests.integration.observed_services import SOURCE
from tests.integration.test_supervisor import wait_for

COUNTED = "tests.integration.observed_services:Counted"
REQUESTS = "rpc_server_requests_total"
CALLS, FAILURES, CASTS, EVENTS = 7, 3, 4, 5


@contextmanager
def metrics_daemon(
    broker_url: str, port: int, tmp_path: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`rpc run COUNTED --metrics-port PORT *args`; failed casts run twice at once."""
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        rpc_command("run", COUNTED, "--metrics-port", str(port), *args),
        cwd=PROJECT_ROOT,
        env=project_env(
            broker_url,
            RPC_RETRY_DELAY="0",
            RPC_DELIVERY_LIMIT="2",
            TMPDIR=str(tmp_path),
        ),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children():
                child.kill()
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def client(broker_url):
    registry = CollectorRegistry()
    config = Config(broker_url=broker_url, default_timeout=30)
    with ClusterProxy(config=config, metrics_registry=registry) as cluster:
        cluster.registry = registry  # type: ignore[attr-defined]
        yield cluster


def serve_ready(cluster: ClusterProxy) -> None:
    from tests.integration.daemons import wait_until_served

    wait_until_served(cluster, "counted", "pause", (0,))


def workload(cluster: ClusterProxy) -> None:
    """Calls that succeed and fail, casts (one failing), events, refused calls."""
    for number in range(CALLS):
        assert cluster.counted.ok(number) == number
    for _ in range(FAILURES):
        with pytest.raises(RemoteError):
            cluster.counted.fail()
    for _ in range(CASTS):
        cluster.counted.note.cast()
    cluster.counted.note.cast(fail=True)
    for number in range(EVENTS):
        cluster.dispatch(SOURCE, "ping", number)
    with pytest.raises(MethodNotFoundError):
        cluster.counted.missing()
    with pytest.raises(InvalidArgumentsError):
        cluster.counted.ok(1, 2, 3)


def server(found: Samples, method: str, kind: str, outcome: str) -> float:
    return value(
        found, REQUESTS, service="counted", method=method, kind=kind, outcome=outcome
    )


def settled(rounds: int):
    """True once the casts and events of ``rounds`` workloads have all run."""

    def check(found: Samples) -> bool:
        return (
            server(found, "note", "cast", "ok") == CASTS * rounds
            and server(found, "note", "cast", "error") == 2 * rounds
            and server(found, "on_ping", "event", "ok") == EVENTS * rounds
            # Sampled every half second: settled once the sample says so too.
            and value(found, "rpc_server_in_flight", service="counted") == 0
            and value(found, "rpc_handler_slots", kind="thread", state="busy") == 0
        )

    return check


def assert_exact_server_counts(found: Samples, rounds: int) -> None:
    assert server(found, "ok", "call", "ok") == CALLS * rounds
    assert server(found, "fail", "call", "error") == FAILURES * rounds
    assert server(found, "note", "cast", "ok") == CASTS * rounds
    # delivery_limit 2: the failing cast ran twice, then went to the dead letters.
    assert server(found, "note", "cast", "error") == 2 * rounds
    assert server(found, "on_ping", "event", "ok") == EVENTS * rounds
    assert server(found, "missing", "call", "invalid") == rounds
    assert server(found, "ok", "call", "invalid") == rounds
    dead = value(
        found,
        "rpc_server_dead_lettered_total",
        service="counted",
        reason="handler-error",
    )
    assert dead == rounds
    histogram = "rpc_server_request_duration_seconds_count"
    assert value(found, histogram, service="counted", method="ok") == CALLS * rounds
    assert value(found, "rpc_server_in_flight", service="counted") == 0


def test_one_worker_counts_every_call_cast_and_event(broker_url, client, tmp_path):
    port = free_port()
    with metrics_daemon(broker_url, port, tmp_path):
        serve_ready(client)
        workload(client)
        found = wait_for_metrics(port, settled(1))
        assert_exact_server_counts(found, 1)
        assert value(found, "rpc_worker_info", version="0.1.0") == 1
        assert value(found, "rpc_broker_connected", role="worker") == 1
        assert value(found, "rpc_handler_slots", kind="thread", state="busy") == 0
        assert value(found, "rpc_handler_slots", kind="thread", state="idle") == 10
        # The caller stamped each message: every run measured its queue wait.
        waited = "rpc_server_queue_wait_seconds_count"
        assert value(found, waited, service="counted", method="ok") == CALLS
        sizes = "rpc_server_message_size_bytes_count"
        assert value(found, sizes, service="counted", direction="in") > 0
        assert value(found, sizes, service="counted", direction="out") > 0
        # Queue depths come from passive declares, within 5 s.
        found = wait_for_metrics(
            port,
            lambda f: (
                value(f, "rpc_queue_messages", queue="rpc-counted.dead-letter") == 1
            ),
            timeout=15,
        )
        assert value(found, "rpc_queue_consumers", queue="rpc-counted") == 1
        assert value(found, "rpc_queue_messages", queue="rpc-counted") == 0
    registry = client.registry
    assert (
        registry.get_sample_value(
            "rpc_client_requests_total",
            {"service": "counted", "method": "ok", "outcome": "ok"},
        )
        == CALLS
    )
    assert (
        registry.get_sample_value(
            "rpc_client_requests_total",
            {"service": "counted", "method": "fail", "outcome": "remote_error"},
        )
        == FAILURES
    )
    assert (
        registry.get_sample_value(
            "rpc_published_messages_total", {"kind": "cast", "outcome": "ok"}
        )
        == CASTS + 1
    )
    assert (
        registry.get_sample_value(
            "rpc_published_messages_total", {"kind": "event", "outcome": "ok"}
        )
        == EVENTS
    )
    assert registry.get_sample_value("rpc_client_in_flight") == 0
    assert registry.get_sample_value("rpc_broker_connected", {"role": "client"}) == 1


def children(process: subprocess.Popen[bytes]) -> set[int]:
    return {child.pid for child in psutil.Process(process.pid).children()}


def test_a_supervisor_serves_exact_totals_that_survive_a_restart(
    broker_url, client, tmp_path
):
    port = free_port()
    with metrics_daemon(broker_url, port, tmp_path, "--processes", "2") as daemon:
        wait_for_metrics(
            port, lambda f: value(f, "rpc_broker_connected", role="worker") == 2
        )
        assert len(list(tmp_path.glob("rpc-metrics-*"))) == 1
        serve_ready(client)
        workload(client)
        found = wait_for_metrics(port, settled(1))
        assert_exact_server_counts(found, 1)
        assert value(found, "rpc_worker_info", version="0.1.0") == 2

        before = children(daemon)
        victim = min(before)
        psutil.Process(victim).kill()
        wait_for("a replacement", lambda: len(children(daemon) - before) == 1)
        (replacement,) = children(daemon) - before
        wait_for(
            "the replacement to serve",
            lambda: client.counted.whoami() == replacement,
        )
        found = wait_for_metrics(port, settled(1))
        # The dead child's gauges went with it; its counters stayed in the sums.
        assert value(found, "rpc_worker_info", version="0.1.0") == 2
        assert value(found, "rpc_handler_slots", kind="thread", state="idle") == 20
        assert_exact_server_counts(found, 1)

        workload(client)
        found = wait_for_metrics(port, settled(2))
        assert_exact_server_counts(found, 2)
        assert len(matching(found, "rpc_worker_info")) == 1
    assert list(tmp_path.glob("rpc-metrics-*")) == []


def test_the_gateway_serves_its_own_metrics(broker_url, tmp_path):
    import urllib.request

    from tests.integration.daemons import daemons, project_env, wait_until_served

    http, metrics = free_port(), free_port()
    command = ["gateway", "--port", str(http), "--metrics-port", str(metrics)]
    command.append("--allow-anonymous")
    with daemons(broker_url, ["services.greeter:Greeter"]):
        with ClusterProxy(config=Config(broker_url=broker_url)) as cluster:
            wait_until_served(cluster, "greeter", "hello", ("ready",))
        gateway = subprocess.Popen(
            rpc_command(*command),
            cwd=PROJECT_ROOT,
            env=project_env(broker_url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_metrics(metrics)
            wait_for("the gateway", lambda: healthy(http))
            for _ in range(3):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{http}/greeter/hello",
                    data=b'{"name": "m"}',
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    assert response.status == 200
            found = wait_for_metrics(metrics)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
    routed = {"route": "/{service}/{method}", "status": "200"}
    assert value(found, "rpc_gateway_requests_total", **routed) == 3
    calls = {"service": "greeter", "method": "hello", "outcome": "ok"}
    assert value(found, "rpc_client_requests_total", **calls) == 3
    assert value(found, "rpc_broker_connected", role="client") == 1


def healthy(port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False
