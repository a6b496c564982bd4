"""Settings come from flags, then environment, then a YAML file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpc import deadletter
from rpc.config import DEFAULT_BROKER_URL, Config
from rpc.errors import ConfigError


def test_defaults():
    config = Config.load(environ={})
    assert config.broker_url == DEFAULT_BROKER_URL
    assert config.default_timeout == 30.0


def test_precedence_flag_then_environment_then_file(tmp_path):
    path = tmp_path / "rpc.yaml"
    path.write_text("broker_url: amqp://file//\nmax_workers: 3\ndefault_timeout: 7\n")
    environ = {"RPC_BROKER_URL": "amqp://env//", "RPC_MAX_WORKERS": "5"}
    config = Config.load(path, environ=environ, broker_url="amqp://flag//")
    assert config.broker_url == "amqp://flag//"
    assert config.max_workers == 5
    assert config.default_timeout == 7
    assert Config.load(path, environ=environ).broker_url == "amqp://env//"
    assert Config.load(path, environ={}).broker_url == "amqp://file//"


def test_file_named_by_environment(tmp_path):
    path = tmp_path / "rpc.yaml"
    path.write_text("heartbeat: 5\n")
    assert Config.load(environ={"RPC_CONFIG": str(path)}).heartbeat == 5


def test_flags_set_to_none_are_ignored():
    assert Config.load(environ={}, broker_url=None).broker_url == DEFAULT_BROKER_URL


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("max_workers: 0\n", "max_workers"),
        ("queue_type: stream\n", "queue_type"),
        ("colour: blue\n", "unknown settings: colour"),
        ("- a list\n", "mapping"),
        ("broker_url: nowhere\n", "not a URL"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "rpc.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Config.load(path, environ={})


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "absent.yaml", environ={})


def test_bad_environment_value():
    with pytest.raises(ConfigError, match="RPC_MAX_WORKERS"):
        Config.load(environ={"RPC_MAX_WORKERS": "many"})


def test_retry_delays_default_to_one_second_doubling_up_to_thirty():
    config = Config.load(environ={})
    assert (config.retry_delay, config.retry_max_delay) == (1.0, 30.0)


def test_retry_delays_follow_the_same_precedence(tmp_path):
    path = tmp_path / "rpc.yaml"
    path.write_text("retry_delay: 0.25\nretry_max_delay: 4\n")
    environ = {"RPC_RETRY_DELAY": "0.5"}
    config = Config.load(path, environ=environ)
    assert (config.retry_delay, config.retry_max_delay) == (0.5, 4)
    assert Config.load(path, environ=environ, retry_delay=0).retry_delay == 0
    assert Config.load(path, environ={}).retry_delay == 0.25


@pytest.mark.parametrize("field", ["retry_delay", "retry_max_delay"])
def test_negative_retry_delays_are_refused(field):
    with pytest.raises(ConfigError, match=f"{field}: must not be negative"):
        Config.load(environ={}, **{field: -1})
    with pytest.raises(ConfigError, match=f"RPC_{field.upper()}"):
        Config.load(environ={f"RPC_{field.upper()}": "soon"})


def test_the_retry_example_of_the_dead_letter_docs_waits_as_it_says(tmp_path):
    text = (Path(__file__).parents[2] / "docs" / "dead-letters.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "rpc.yaml"
    path.write_text(block)
    config = Config.load(path, environ={})
    waits = [
        deadletter.retry_delay(
            failed, base=config.retry_delay, cap=config.retry_max_delay
        )
        for failed in range(1, config.delivery_limit)
    ]
    assert waits == [0.5, 1, 2, 2]
    assert "0.5, 1, 2, 2 s" in block


@pytest.mark.parametrize(
    "setting", [{"copies": "fast"}, {"reply_queue": "amq.rabbitmq.reply-to"}]
)
def test_copies_and_reply_queue_take_only_their_named_values(setting):
    with pytest.raises(ConfigError, match=next(iter(setting))):
        Config(**setting)


def test_copies_and_reply_queue_come_from_the_environment():
    config = Config.load(
        environ={"RPC_COPIES": "unconfirmed", "RPC_REPLY_QUEUE": "private"}
    )
    assert config.copies == "unconfirmed"
    assert config.private_replies


def test_security_settings_from_the_environment():
    config = Config.load(
        environ={
            "RPC_BROKER_URL": "amqps://h//",
            "RPC_SSL_VERIFY": "false",
            "RPC_SSL_CA_FILE": "/etc/ca.pem",
            "RPC_TRUSTED_IDENTITY_USERS": "gateway, gateway-2",
            "RPC_MAX_HEADER_BYTES": "2048",
        }
    )
    assert config.ssl_verify is False
    assert config.ssl_ca_file == "/etc/ca.pem"
    assert config.trusted_identity_users == ("gateway", "gateway-2")
    assert config.max_header_bytes == 2048
    with pytest.raises(ConfigError, match="RPC_SSL_VERIFY"):
        Config.load(environ={"RPC_SSL_VERIFY": "maybe"})


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"ssl_ca_file": "/ca.pem"}, "need an amqps://"),
        ({"broker_url": "amqps://a//;amqp://b//"}, "mixes"),
        ({"broker_url": "amqps://a//", "ssl_key_file": "/k"}, "without ssl_cert_file"),
        ({"broker_url": "amqps://a//", "login_method": "EXTERNAL"}, "ssl_cert_file"),
        ({"login_method": "KERBEROS"}, "login_method must be"),
        ({"ssl_verify": "no"}, "true or false"),
        ({"max_header_fields": 0}, "max_header_fields"),
    ],
)
def test_security_settings_that_cannot_work_are_refused(settings, complaint):
    with pytest.raises(ConfigError, match=complaint):
        Config(**settings)
