"""The README's "Observing a running system" examples, run as shown on RabbitMQ."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import urllib.request

from rpc import ClusterProxy, Config
from tests.integration.daemons import (
    PROJECT_ROOT,
    project_env,
    rpc_command,
    wait_until_served,
)
from tests.integration.metrics_scrape import free_port, value, wait_for_metrics
from tests.readme import code_blocks

SECTION = "Observing a running system"
README_BROKER = "amqp://guest:guest@localhost:5672//"


def blocks(language: str) -> list[str]:
    return code_blocks(SECTION, language)


def rpc_words(line: str) -> tuple[dict[str, str], list[str]]:
    """The environment and the ``rpc`` arguments of one shell line of the README."""
    words = shlex.split(line.rstrip(" &"))
    env = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[0] == "rpc", line
    return env, words[1:]


class Daemon:
    """A README line ``rpc run ... &``: started, stopped, its stderr kept."""

    def __init__(self, broker_url: str, line: str, tmp_path, **replace: str) -> None:
        for old, new in replace.items():
            line = line.replace(old, new)
        env, args = rpc_words(line)
        self.log = tmp_path / "daemon.log"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                rpc_command(*args),
                cwd=PROJECT_ROOT,
                env=project_env(broker_url, **env),
                stdout=subprocess.DEVNULL,
                stderr=output,
            )

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return self.log.read_text()


def run_rpc(broker_url: str, line: str) -> str:
    env, args = rpc_words(line)
    done = subprocess.run(
        rpc_command(*args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def served(broker_url: str, service: str, method: str, *args: object) -> None:
    with ClusterProxy(config=Config(broker_url=broker_url)) as cluster:
        wait_until_served(cluster, service, method, args)


def test_the_metrics_example_shows_the_count(broker_url, tmp_path):
    start, call, scrape = blocks("bash")[0].strip().splitlines()
    port = str(free_port())
    daemon = Daemon(broker_url, start, tmp_path, **{"9100": port})
    try:
        # Consuming once its connection is counted: the call below is the only one.
        wait_for_metrics(
            int(port), lambda f: value(f, "rpc_broker_connected", role="worker") == 1
        )
        assert run_rpc(broker_url, call).strip() == '"Hello, metrics!"'
        url, _, pattern = scrape.partition(" | grep ")
        assert url.split()[-1] == "localhost:9100/metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as page:
            text = page.read().decode()
    finally:
        daemon.stop()
    shown = [line for line in text.splitlines() if pattern in line]
    assert shown == blocks("text")[0].strip().splitlines()


def spans_printed(output: str) -> list[dict]:
    decoder = json.JSONDecoder()
    spans, position = [], output.find("{")
    while position != -1:
        span, end = decoder.raw_decode(output, position)
        spans.append(span)
        position = output.find("{", end)
    return spans


def test_the_trace_example_prints_one_trace(broker_url):
    code = blocks("python")[0].replace(README_BROKER, broker_url)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.rstrip().endswith("HELLO, OTEL!")
    spans = spans_printed(done.stdout.rpartition("HELLO, OTEL!")[0])
    assert [(s["name"], s["kind"]) for s in spans] == [
        ("greeter/hello", "SpanKind.SERVER"),
        ("greeter/hello", "SpanKind.CLIENT"),
        ("frontend/welcome", "SpanKind.SERVER"),
        ("frontend/welcome", "SpanKind.CLIENT"),
    ]
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    ids = [s["context"]["span_id"] for s in spans]
    assert [s["parent_id"] for s in spans] == [ids[1], ids[2], ids[3], None]
    shown = json.loads(
        blocks("text")[1].replace("    ...\n", "").replace(",\n}", "\n}")
    )
    assert set(shown) <= set(spans[0])


def test_the_json_log_line_is_what_the_daemon_prints(broker_url, tmp_path):
    start, call = blocks("bash")[1].strip().splitlines()
    daemon = Daemon(broker_url, start, tmp_path)
    try:
        served(broker_url, "concierge", "pause", 0)
        run_rpc(broker_url, call)
    finally:
        log = daemon.stop()
    (shown,) = [json.loads(block) for block in blocks("json")]
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (slow,) = [line for line in lines if line["logger"] == shown["logger"]]
    assert set(slow) == set(shown)
    for field in ("level", "service", "method", "outcome"):
        assert slow[field] == shown[field]
    assert slow["message"].startswith("concierge.pause took ")
    assert 1000 <= slow["duration_ms"] < 5000


def test_the_status_example_shows_the_worker(broker_url, tmp_path):
    (line,) = blocks("bash")[2].strip().splitlines()
    daemon = Daemon(broker_url, "rpc run services.greeter:Greeter &", tmp_path)
    try:
        served(broker_url, "greeter", "hello", "status")
        output = run_rpc(broker_url, line)
    finally:
        daemon.stop()
    shown = blocks("text")[2].strip().splitlines()
    printed = output.strip().splitlines()
    assert printed[:2] == shown[:2]
    assert printed[2].split() == shown[2].split()
    (row,) = printed[3:]
    address, version, _, in_flight, count, errors = row.split()
    assert address.endswith(f":{daemon.process.pid}")
    assert (version, in_flight, count, errors) == ("0.1.0", "0", "1", "0")
