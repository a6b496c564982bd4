"""`rpc broker ensure`: check a broker, start a local one, install it, or say why not.

The machine is replaced by fakes (what is installed, who we are, what listens), so
each path runs without touching the real RabbitMQ.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rpc import BrokerError, broker, cli

LOCAL = "amqp://guest:guest@localhost:5672//"


class Machine:
    """A host where RabbitMQ may be installed, running, or neither."""

    def __init__(
        self, *, installed: bool, running: bool, root: bool = False, apt: bool = True
    ) -> None:
        self.installed, self.running = installed, running
        self.root, self.apt = root, apt
        self.commands: list[list[str]] = []

    def which(self, name: str) -> str | None:
        if name in ("rabbitmq-server", "rabbitmq-plugins"):
            return f"/usr/sbin/{name}" if self.installed else None
        return "/usr/bin/apt-get" if name == "apt-get" and self.apt else None

    def run(self, command: list[str], log: bool) -> None:
        self.commands.append(command)
        if command[:3] == ["apt-get", "install", "-y"]:
            self.installed = True
        if command == ["rabbitmq-server", "-detached"]:
            self.running = True


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    def install(**state: bool) -> Machine:
        host = Machine(**state)
        monkeypatch.setattr(broker.shutil, "which", host.which)
        monkeypatch.setattr(broker.os, "geteuid", lambda: 0 if host.root else 1000)
        monkeypatch.setattr(broker, "_run", host.run)
        monkeypatch.setattr(broker, "is_reachable", lambda url: host.running)
        monkeypatch.setattr(broker, "START_TIMEOUT", 1.0)
        return host

    return install


PLUGINS = ["rabbitmq-plugins", "enable", "--quiet", *broker.PLUGINS]


def test_a_running_broker_is_only_checked(machine):
    host = machine(installed=True, running=True)
    assert broker.ensure_broker(LOCAL).startswith("broker reachable at localhost:5672")
    assert host.commands == [PLUGINS]


def test_an_installed_broker_that_is_stopped_is_started(machine):
    host = machine(installed=True, running=False)
    assert "started RabbitMQ" in broker.ensure_broker(LOCAL, log=False)
    assert host.commands == [["rabbitmq-server", "-detached"], PLUGINS]


def test_a_missing_broker_is_installed_with_apt_when_root(machine):
    host = machine(installed=False, running=False, root=True)
    assert "started RabbitMQ" in broker.ensure_broker(LOCAL, log=False)
    assert [c[:2] for c in host.commands] == [
        ["apt-get", "update"],
        ["apt-get", "install"],
        ["rabbitmq-server", "-detached"],
        PLUGINS[:2],
    ]


@pytest.mark.parametrize(
    "state",
    [
        {"root": False},
        {"root": True, "apt": False},
    ],
)
def test_a_missing_broker_that_cannot_be_installed_is_one_clear_line(machine, state):
    host = machine(installed=False, running=False, **state)
    with pytest.raises(BrokerError) as caught:
        broker.ensure_broker(LOCAL)
    assert "RabbitMQ is not installed" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert host.commands == []


def test_no_install_never_installs(machine):
    host = machine(installed=False, running=False, root=True)
    with pytest.raises(BrokerError, match="not installed"):
        broker.ensure_broker(LOCAL, install=False)
    assert host.commands == []


def test_a_remote_broker_is_never_started_here(machine):
    host = machine(installed=True, running=False, root=True)
    with pytest.raises(BrokerError, match=r"no broker answers at rabbit\.example:5673"):
        broker.ensure_broker("amqp://u:p@rabbit.example:5673/prod")
    assert host.commands == []


def test_a_broker_that_never_listens_is_an_error_not_a_hang(machine, monkeypatch):
    host = machine(installed=True, running=False)
    monkeypatch.setattr(host, "run", lambda command, log: None)  # starts, never listens
    monkeypatch.setattr(broker, "_run", host.run)
    monkeypatch.setattr(broker, "START_TIMEOUT", 0.0)
    with pytest.raises(BrokerError, match="did not start listening"):
        broker.ensure_broker(LOCAL)


def test_the_command_takes_the_url_from_the_environment(monkeypatch):
    seen: list[str] = []

    def ensure(url: str, *, install: bool) -> str:
        seen.append(url)
        raise BrokerError("no broker answers at elsewhere:5672; start it")

    monkeypatch.setattr(cli, "ensure_broker", ensure)
    monkeypatch.setenv("RPC_BROKER_URL", "amqp://elsewhere//")
    result = CliRunner().invoke(cli.main, ["broker", "ensure"])
    assert seen == ["amqp://elsewhere//"]
    assert result.exit_code == 1
    assert result.output == "error: no broker answers at elsewhere:5672; start it\n"
