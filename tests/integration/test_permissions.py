"""Least privilege on the real broker: a user given only greeter's objects, as
`rpc broker permissions greeter` prints them, serves greeter and nothing else."""

from __future__ import annotations

import subprocess
import time

import kombu
import pytest
from amqp.exceptions import AccessRefused

from rpc import BrokerError, ClusterProxy, Config, ServiceRunner
from rpc.permissions import client, worker
from services.greeter import Greeter
from services.shop import Shop
from tests.integration.broker_users import Users, module_users  # noqa: F401
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command

PASSWORD = "greeter-only-password"


def printed_permissions(*args: str) -> list[str]:
    result = subprocess.run(
        rpc_command("broker", "permissions", *args),
        cwd=PROJECT_ROOT,
        env=project_env("amqp://guest:guest@127.0.0.1:5672//"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def test_the_cli_prints_the_lines_the_test_applies():
    lines = printed_permissions("greeter", "--user", "gw", "--vhost", "prod")
    assert lines == worker(["greeter"]).commands("gw", "prod")
    assert printed_permissions("--role", "client") == client().commands("guest", "/")


@pytest.fixture(scope="module")
def broker_users(module_users: Users) -> Users:  # noqa: F811
    return module_users


@pytest.fixture(scope="module")
def greeter_user(broker_users: Users) -> str:
    user = broker_users.add("greeter", PASSWORD)
    broker_users.grant(user, worker(["greeter"]))
    return broker_users.url(user, PASSWORD)


def test_a_user_restricted_to_greeter_serves_its_calls(greeter_user, broker_users):
    config = Config(broker_url=greeter_user)
    with ServiceRunner([Greeter], config):
        # A caller with a client's rights only: it reads no queue at all.
        caller = broker_users.add("caller", PASSWORD)
        broker_users.grant(caller, client(["greeter"]))
        with ClusterProxy(broker_users.url(caller, PASSWORD)) as cluster:
            assert cluster.greeter.hello("least privilege") == (
                "Hello, least privilege!"
            )
            assert cluster.greeter.hello.cast("a cast") is None
            assert "greeter" in cluster.discover()


def test_another_services_queue_is_refused_clearly_and_at_once(
    greeter_user,
    broker_users,
):
    # shop's queue exists (guest made it): the restricted user may not touch it.
    with ServiceRunner([Shop], Config(broker_url=broker_users.guest_url)):
        pass
    with kombu.Connection(greeter_user) as connection:
        for attempt in ("consume", "purge", "bind"):
            channel = connection.channel()
            with pytest.raises(AccessRefused):
                if attempt == "consume":
                    channel.basic_consume(queue="rpc-shop", callback=lambda m: None)
                elif attempt == "purge":
                    channel.queue_purge(queue="rpc-shop")
                else:
                    # Its own queue, bound to take shop's requests: the topic
                    # permission on `rpc` refuses the binding key.
                    channel.queue_declare(queue="rpc-greeter.stolen", auto_delete=True)
                    channel.queue_bind(
                        queue="rpc-greeter.stolen", exchange="rpc", routing_key="shop.*"
                    )
    config = Config(broker_url=greeter_user, connect_timeout=30)
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        ServiceRunner([Shop], config).start()
    assert time.monotonic() - started < 10  # refused once, not retried for 30 s
    message = str(caught.value)
    assert "ACCESS_REFUSED" in message and "rpc broker permissions" in message
    assert "\n" not in message and PASSWORD not in message


def test_rpc_run_of_a_refused_service_exits_with_one_line(greeter_user):
    started = time.monotonic()
    result = subprocess.run(
        rpc_command("run", "services.shop:Shop"),
        cwd=PROJECT_ROOT,
        env=project_env(greeter_user, RPC_CONNECT_TIMEOUT="30"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ACCESS_REFUSED" in errors[0]
    assert PASSWORD not in result.stderr + result.stdout


def test_a_supervisor_whose_workers_are_refused_stops_instead_of_restarting(
    greeter_user,
):
    started = time.monotonic()
    result = subprocess.run(
        rpc_command("run", "services.shop:Shop", "--processes", "2"),
        cwd=PROJECT_ROOT,
        env=project_env(greeter_user),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 45
    assert "refused by the broker" in result.stderr
    assert "restarting in" not in result.stderr  # no crash loop, however slow
    assert PASSWORD not in result.stderr
