"""A broker password never reaches what the framework prints: a daemon's and the
gateway's debug logs, the CLI's answers and errors, discovery listings."""

from __future__ import annotations

import subprocess
import time
import uuid

from tests.integration.broker_users import broker_users  # noqa: F401
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command, stop
from tests.integration.test_gateway import gateway, http, post


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        rpc_command("-vv", *args),
        cwd=PROJECT_ROOT,
        env=project_env(url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_password_is_in_no_output(broker_users, tmp_path):  # noqa: F811
    password = f"pw-{uuid.uuid4().hex}"
    user = broker_users.add("app", password)
    broker_users.grant_all(user)
    url = broker_users.url(user, password)
    outputs: list[str] = []
    daemon_log = tmp_path / "daemon.log"
    with open(daemon_log, "w") as log:
        daemon = subprocess.Popen(
            rpc_command("-vv", "run", "services.greeter:Greeter"),
            cwd=PROJECT_ROOT,
            env=project_env(url),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        served = run(url, "call", "--wait", "60", "greeter.hello", '["secret keeper"]')
        assert served.returncode == 0, served.stderr
        outputs += [served.stdout, served.stderr]
        refused = run(
            broker_users.url(user, "wrong-" + password), "call", "greeter.hello"
        )
        assert refused.returncode == 1
        assert "refused the connection" in refused.stderr
        outputs += [refused.stdout, refused.stderr]
        letters = run(url, "dead-letters", "greeter")
        outputs += [letters.stdout, letters.stderr]
        gateway_log = tmp_path / "gateway.log"
        with open(gateway_log, "wb") as log, gateway(url, log=log) as base:
            outputs.append(str(http(base, "GET", "/services")))
            outputs.append(str(post(base, "/greeter/hello", ["x"])))
            outputs.append(str(http(base, "GET", "/health")))
        outputs.append(gateway_log.read_text())
    finally:
        stop([daemon])
    deadline = time.monotonic() + 10
    while "connected to" not in daemon_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    outputs.append(daemon_log.read_text())
    everything = "\n".join(outputs)
    assert password not in everything
    # The URL is printed, masked: it was there to leak.
    assert f"{user}:**@" in everything
