"""`rpc run` and `rpc call` as a user runs them: real processes, real broker."""

from __future__ import annotations

import subprocess

import pytest

from rpc import ClusterProxy, Config
from tests.integration.daemons import (
    PROJECT_ROOT,
    daemons,
    project_env,
    rpc_command,
    wait_until_served,
)

ECHO = "tests.integration.sample_services:Echo"


@pytest.fixture
def cluster(broker_url):
    with ClusterProxy(config=Config(broker_url=broker_url)) as proxy:
        yield proxy


def test_identical_daemons_share_one_queue(broker_url, cluster):
    with daemons(broker_url, [ECHO], count=2) as processes:
        wait_until_served(cluster, "echo")
        futures = [cluster.echo.slow_whoami.call_async(0.3) for _ in range(40)]
        pids = {future.result() for future in futures}
    assert pids == {process.pid for process in processes}


def test_a_daemon_added_later_takes_work_without_a_restart(broker_url, cluster):
    with daemons(broker_url, [ECHO]) as first:
        wait_until_served(cluster, "echo")
        with daemons(broker_url, [ECHO]) as second:
            # The second daemon is consuming once a call lands on it.
            pids: set[int] = set()
            for _ in range(20):
                futures = [cluster.echo.slow_whoami.call_async(0.2) for _ in range(12)]
                pids |= {future.result() for future in futures}
                if second[0].pid in pids:
                    break
    assert pids == {first[0].pid, second[0].pid}


def rpc_call(broker_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rpc_command("call", *args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_rpc_call_prints_json_and_fails_with_the_remote_error(broker_url, cluster):
    with daemons(broker_url, [ECHO]):
        wait_until_served(cluster, "echo")
        ok = rpc_call(broker_url, "echo.echo", '{"value": {"a": [1, 2]}}')
        positional = rpc_call(broker_url, "echo.echo", '["by position"]')
        failed = rpc_call(broker_url, "echo.fail", '{"message": "boom"}')
        unknown = rpc_call(broker_url, "nobody.here", "{}")
        bad_json = rpc_call(broker_url, "echo.echo", "{oops")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.replace(" ", "").replace("\n", "") == '{"a":[1,2]}'
    assert positional.stdout.strip() == '"by position"'
    assert failed.returncode == 1
    assert "ValueError: boom" in failed.stderr
    assert unknown.returncode == 1
    assert "UnknownServiceError" in unknown.stderr
    assert bad_json.returncode != 0
    assert "not valid JSON" in bad_json.stderr


def test_demo_runs_end_to_end(broker_url):
    result = subprocess.run(
        [*rpc_command()[:1], "-m", "services.demo"],
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "HELLO, WORLD!" in result.stdout
    assert "exit codes [0, 0]" in result.stdout


def test_rpc_call_wait_retries_until_a_worker_has_started(broker_url, cluster):
    caller = subprocess.Popen(
        rpc_command("call", "--wait", "60", "echo.echo", '["late"]'),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with daemons(broker_url, [ECHO]):
            out, err = caller.communicate(timeout=60)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.communicate()
    assert caller.returncode == 0, err
    assert out.strip() == '"late"'
