"""The ``rpc`` command as a new user meets it, against the real RabbitMQ: it finds
code beside the user, says what a daemon does, and fails in one line, at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpc import ClusterProxy, Config, ServiceRunner
from services.greeter import Greeter
from services.shop import Stock
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command, stop
from tests.integration.faults import wait_for
from tests.readme import README

SLOW = "tests.integration.sample_services:Echo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rpc(
    broker_url: str,
    *args: str,
    timeout: float = 60,
    stdin: str | None = None,
    **env: str,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``python -m rpc *args`` of this checkout; its result and how long it took."""
    started = time.monotonic()
    done = subprocess.run(
        rpc_command(*args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )
    return done, time.monotonic() - started


def one_error_line(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    assert done.returncode == status, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_the_installed_command_finds_a_module_in_the_current_directory(
    broker_url, tmp_path
):
    script = Path(sys.executable).with_name("rpc")  # the console script pip made
    assert script.exists()
    (tmp_path / "mymod.py").write_text(
        "from rpc import rpc\n\n\nclass Svc:\n    name = 'mymod_svc'\n\n"
        "    @rpc\n    def ping(self) -> str:\n        return 'pong'\n"
    )
    env = {**os.environ, "RPC_BROKER_URL": broker_url}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [str(script), "run", "mymod:Svc"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with ClusterProxy(config=Config(broker_url=broker_url)) as cluster:
            wait_for(lambda: _answers(cluster, "mymod_svc"), 30, "the daemon to serve")
            assert cluster.mymod_svc.ping() == "pong"
    finally:
        stop([process])


def _answers(cluster: ClusterProxy, service: str) -> bool:
    try:
        cluster.call(service, "ping", timeout=5)
    except Exception:
        return False
    return True


def test_a_daemon_logs_each_call_with_v_and_tells_its_stop(broker_url, tmp_path):
    log = tmp_path / "run.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            rpc_command("run", SLOW, "-v"),
            cwd=PROJECT_ROOT,
            env=project_env(broker_url),
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    try:
        with ClusterProxy(config=Config(broker_url=broker_url)) as cluster:
            wait_for(lambda: "serving echo" in log.read_text(), 30, "the start line")
            wait_for(lambda: _served(cluster), 30, "the daemon to serve")
            future = cluster.echo.sleep.call_async(1.5)
            time.sleep(0.5)  # the call is running
            process.send_signal(signal.SIGTERM)
            assert future.result(timeout=30) == 1.5
        assert process.wait(timeout=30) == 0
    finally:
        stop([process])
    text = log.read_text()
    assert "rpc.calls: echo.echo ok in " in text
    assert "(call, correlation id " in text
    assert "rpc.calls: echo.sleep ok in " in text
    assert "SIGTERM: stopping" in text
    assert "echo: draining 1 calls" in text
    assert "echo: stopped" in text
    assert "exiting with 0 (SIGTERM)" in text


def _served(cluster: ClusterProxy) -> bool:
    try:
        return cluster.call("echo", "echo", ["ready"], timeout=5) == "ready"
    except Exception:
        return False


def test_without_v_a_daemon_logs_no_call_but_its_start_and_stop(broker_url, tmp_path):
    log = tmp_path / "run.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            rpc_command("run", SLOW),
            cwd=PROJECT_ROOT,
            env=project_env(broker_url),
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    try:
        with ClusterProxy(config=Config(broker_url=broker_url)) as cluster:
            wait_for(lambda: _served(cluster), 30, "the daemon to serve")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop([process])
    text = log.read_text()
    assert "serving echo; Ctrl+C stops" in text
    assert "rpc.calls" not in text
    assert "echo: stopped" in text
    assert "exiting with 0 (SIGTERM)" in text


def test_a_closed_port_says_retrying_then_fails_in_the_configured_time():
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    done, took = rpc(url, "call", "greeter.hello", "--connect-timeout", "1.5")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    assert "Connection refused; retrying for up to 1.5 s..." in lines[0]
    assert lines[1].startswith("BrokerError: cannot connect to amqp://guest:**@")
    assert "gave up after" in lines[1]
    assert "Traceback" not in done.stderr
    assert took < 8


@pytest.mark.parametrize("wrong", ["password", "vhost"])
def test_a_refused_login_fails_at_once_without_retrying(broker_url, wrong):
    if wrong == "password":
        url = broker_url.replace("guest:guest@", "guest:wrong-password@", 1)
        refusal = "ACCESS_REFUSED"
    else:
        url = broker_url.rsplit("/", 1)[0] + "/no-such-vhost-for-rpc-tests"
        refusal = "NOT_ALLOWED"
    assert url != broker_url
    done, took = rpc(url, "call", "greeter.hello")
    line = one_error_line(done)
    assert line.startswith("AccessRefusedError: the broker at amqp://guest:**@")
    assert refusal in line
    assert "retrying" not in done.stderr
    assert took < 8  # connect_timeout is 10 s: no retry happened


def test_a_url_of_another_scheme_is_one_line():
    done, _ = rpc(
        "amqp://unused//", "call", "greeter.hello", "--broker", "http://localhost/"
    )
    line = one_error_line(done, 2)
    assert "--broker: http:// is not a broker URL" in line


def test_the_gateway_on_a_busy_port_is_one_line_and_never_says_it_listens():
    # Refused before the broker is tried: no broker is needed.
    broker_url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done, took = rpc(
            broker_url, "gateway", "--port", str(port), "--allow-anonymous"
        )
    line = one_error_line(done)
    assert line == (
        f"error: the gateway cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert took < 8


def test_the_gateway_on_a_host_not_of_this_machine_is_one_line():
    broker_url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    done, _ = rpc(
        broker_url,
        "gateway",
        "--host",
        "no-such-host.invalid",
        "--port",
        "0",
        "--allow-anonymous",
    )
    line = one_error_line(done)
    assert line.startswith(
        "error: the gateway cannot listen on no-such-host.invalid:0: "
    )


def test_the_gateway_logs_each_request_with_v(broker_url, tmp_path):
    log = tmp_path / "gateway.log"
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            rpc_command("gateway", "--port", str(port), "-v", "--allow-anonymous"),
            cwd=PROJECT_ROOT,
            env=project_env(broker_url),
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    try:
        wait_for(lambda: "gateway on http://" in log.read_text(), 30, "the gateway")
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{port}/nosuch/thing", data=b"{}"
                ),
                timeout=10,
            )
        wait_for(lambda: "rpc.gateway.access" in log.read_text(), 10, "the access line")
    finally:
        stop([process])
    (line,) = [
        line for line in log.read_text().splitlines() if "rpc.gateway.access" in line
    ]
    assert " POST /nosuch/thing 404 " in line
    assert line.endswith(" ms")


def test_broker_ensure_on_a_port_nothing_listens_on_says_so_and_starts_nothing(
    tmp_path,
):
    # RabbitMQ runs on 5672 (the suite's broker). A rabbitmq-server first on PATH
    # notes that it was run: it must not be.
    shim = tmp_path / "bin" / "rabbitmq-server"
    shim.parent.mkdir()
    ran = tmp_path / "rabbitmq-server-ran"
    shim.write_text(f'#!/bin/sh\ntouch "{ran}"\nexit 1\n')
    shim.chmod(0o755)
    url = f"amqp://guest:guest@localhost:{free_port()}//"
    path = f"{shim.parent}{os.pathsep}{os.environ['PATH']}"
    done, took = rpc(url, "broker", "ensure", "--broker", url, PATH=path)
    line = one_error_line(done)
    assert "nothing listens on localhost:" in line
    assert "but a broker answers on localhost:5672" in line
    assert took < 8
    assert not ran.exists()


def test_dead_letters_of_an_unknown_service_is_one_line(broker_url):
    done, took = rpc(broker_url, "dead-letters", "nosuchsvc")
    line = one_error_line(done)
    assert "no dead-letter queue 'rpc-nosuchsvc.dead-letter' on this broker" in line
    assert took < 8


def test_the_shell_has_a_connected_cluster_and_lists_what_runs(broker_url):
    config = Config(broker_url=broker_url)
    with ServiceRunner([Greeter, Stock], config):
        done, _ = rpc(
            broker_url,
            "shell",
            "--plain",
            stdin='print(cluster.greeter.hello("shell"))\n'
            "print(sorted(cluster.discover()))\n",
        )
    assert done.returncode == 0, done.stderr
    assert "Hello, shell!" in done.stdout
    assert "['greeter', 'stock']" in done.stdout
    assert "`cluster` is a ClusterProxy connected to amqp://guest:**@" in done.stderr
    assert "  greeter (1): hello" in done.stderr
    assert "  stock (1): sold; events: on_order" in done.stderr


def test_the_readme_shell_session_runs_as_shown(broker_url):
    text = README.read_text()
    start = text.index("    $ rpc shell --plain\n")
    shown = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("    "):
            break
        shown.append(line[4:])
    banner = [line for line in shown if not line.startswith(">>> ")][:-1]
    typed = [line[4:] for line in shown if line.startswith(">>> ")]
    with ServiceRunner([Greeter], Config(broker_url=broker_url)):
        done, _ = rpc(broker_url, "shell", "--plain", stdin="\n".join(typed) + "\n")
    assert done.returncode == 0, done.stderr
    # The URL differs (the test's own vhost): the rest of the banner is as shown.
    printed = done.stderr.splitlines()
    assert printed[0].startswith(banner[0].rsplit(" ", 1)[0] + " amqp://guest:**@")
    assert printed[1 : len(banner)] == banner[1:]
    assert shown[-1] in done.stdout  # 'Hello, shell!'
