"""TLS to the broker, against a private RabbitMQ node with a TLS listener.

Calls, casts and events over ``amqps://``; the failures an operator meets first (a
CA that did not sign the broker's certificate, a plain AMQP client at the TLS port)
fail at once with one line that says what is wrong; a client certificate logs in
with EXTERNAL. The CLI and the gateway take the same settings from the environment.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import ClassVar

import pytest

from rpc import BrokerError, ClusterProxy, Config, ServiceRunner, event_handler, rpc
from rpc.local_cluster import free_port
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.integration.faults import wait_for
from tests.integration.test_gateway import gateway, post
from tests.integration.tls_fixtures import CERTIFICATE_USER, TlsBroker


class Vault:
    name = "vault"
    stored: ClassVar[list[str]] = []
    sealed: ClassVar[list[object]] = []
    lock = threading.Lock()

    @rpc
    def echo(self, value: str) -> str:
        return value

    @rpc
    def store(self, value: str) -> None:
        with Vault.lock:
            Vault.stored.append(value)

    @event_handler("vault", "sealed")
    def on_sealed(self, payload: object) -> None:
        with Vault.lock:
            Vault.sealed.append(payload)


def tls_config(broker: TlsBroker, **settings) -> Config:
    return Config(broker_url=broker.url, ssl_ca_file=str(broker.ca_file), **settings)


def test_a_call_a_cast_and_an_event_over_tls(tls_broker):
    config = tls_config(tls_broker)
    with ServiceRunner([Vault], config), ClusterProxy(config=config) as cluster:
        assert cluster.vault.echo("over tls") == "over tls"
        cluster.vault.store.cast("cast over tls")
        cluster.dispatch("vault", "sealed", {"over": "tls"})
        wait_for(lambda: "cast over tls" in Vault.stored, 30, "the cast")
        wait_for(lambda: {"over": "tls"} in Vault.sealed, 30, "the event")
        flags = tls_broker.cluster.nodes[0].ctl("list_connections", "ssl")
    # The worker's connection and the client's, both over TLS.
    assert flags.split().count("true") >= 2 and "false" not in flags.split()


def test_a_list_of_brokers_is_dialled_in_turn_each_checked_by_its_own_name(
    tls_broker,
):
    # The first is down; the second is reached by another name its certificate has.
    dead = free_port()
    config = Config(
        broker_url=(
            f"amqps://guest:guest@127.0.0.1:{dead}//;"
            f"amqps://guest:guest@localhost:{tls_broker.tls_port}//"
        ),
        ssl_ca_file=str(tls_broker.ca_file),
    )
    with ServiceRunner([Vault], config), ClusterProxy(config=config) as cluster:
        assert cluster.vault.echo("second broker") == "second broker"


def test_a_ca_that_did_not_sign_the_broker_fails_at_once_in_one_line(tls_broker):
    config = Config(
        broker_url=tls_broker.url,
        ssl_ca_file=str(tls_broker.wrong_ca_file),
        connect_timeout=30,
    )
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        ClusterProxy(config=config).start()
    assert time.monotonic() - started < 10  # not retried until connect_timeout
    message = str(caught.value)
    assert "\n" not in message
    assert "certificate" in message
    assert "certificate verify failed" in message
    assert "ssl_ca_file" in message  # what to check
    assert "guest:guest" not in message


def test_without_verification_the_link_is_encrypted_but_unchecked(tls_broker):
    # The wrong CA, but nothing checked: it connects (what ssl_verify: false risks).
    config = Config(
        broker_url=tls_broker.url,
        ssl_ca_file=str(tls_broker.wrong_ca_file),
        ssl_verify=False,
    )
    with ServiceRunner([Vault], config), ClusterProxy(config=config) as cluster:
        assert cluster.vault.echo("unverified") == "unverified"


def test_plain_amqp_at_the_tls_port_fails_clearly_and_quickly(tls_broker):
    config = Config(
        broker_url=f"amqp://guest:guest@127.0.0.1:{tls_broker.tls_port}//",
        connect_timeout=30,
    )
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        ClusterProxy(config=config).start()
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message
    assert "amqps://" in message


def test_a_client_certificate_logs_in_with_external(tls_broker):
    port = tls_broker.tls_port
    config = Config(
        broker_url=f"amqps://127.0.0.1:{port}//",  # no user, no password
        ssl_ca_file=str(tls_broker.ca_file),
        ssl_cert_file=str(tls_broker.client_cert_file),
        ssl_key_file=str(tls_broker.client_key_file),
        login_method="EXTERNAL",
    )
    with ServiceRunner([Vault], config), ClusterProxy(config=config) as cluster:
        assert cluster.vault.echo("by certificate") == "by certificate"
        users = tls_broker.cluster.nodes[0].ctl("list_connections", "user", "ssl")
    assert CERTIFICATE_USER in users


def test_external_login_without_a_certificate_is_refused_clearly(tls_broker):
    # The broker offers EXTERNAL, but a client that sends no certificate has no name.
    config = Config(
        broker_url=f"amqps://127.0.0.1:{tls_broker.tls_port}//",
        ssl_ca_file=str(tls_broker.ca_file),
        ssl_cert_file=str(tls_broker.wrong_ca_file),  # a certificate, not the client's
        login_method="EXTERNAL",
        connect_timeout=30,
    )
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        ClusterProxy(config=config).start()
    assert time.monotonic() - started < 10
    assert "\n" not in str(caught.value)


def test_the_cli_and_the_gateway_take_tls_settings_from_the_environment(tls_broker):
    env = {"RPC_SSL_CA_FILE": str(tls_broker.ca_file)}
    config = tls_config(tls_broker)
    with ServiceRunner([Vault], config):
        result = subprocess.run(
            rpc_command("call", "vault.echo", '["from the cli"]'),
            cwd=PROJECT_ROOT,
            env=project_env(tls_broker.url, **env),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().strip() == '"from the cli"'
        with gateway(tls_broker.url, "--allow-anonymous", **env) as base:
            assert post(base, "/vault/echo", ["through the gateway"]) == (
                200,
                "through the gateway",
            )
