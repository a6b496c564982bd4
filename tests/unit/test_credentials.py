"""Passwords in broker URLs never reach what is printed."""

from __future__ import annotations

import pytest

from rpc import Config, ConfigError
from rpc.credentials import masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:s3cret@host:5672/vh", "amqp://user:**@host:5672/vh"),
        ("amqps://u:p%40ss@h//", "amqps://u:**@h//"),
        ("amqp://u:a:b@c@h/", "amqp://u:**@h/"),  # ':' and '@' in a password
        ("amqp://u@h/", "amqp://u@h/"),
        ("amqp://h:5672/", "amqp://h:5672/"),
        ("memory://", "memory://"),
        (
            "amqp://a:one@h1:1/;amqp://b:two@h2:2/",
            "amqp://a:**@h1:1/;amqp://b:**@h2:2/",
        ),
    ],
)
def test_masked_url(url, shown):
    assert masked_url(url) == shown


def test_config_repr_masks_the_password():
    config = Config(broker_url="amqp://app:hunter2-secret@rabbit:5672/prod")
    assert "hunter2-secret" not in repr(config)
    assert "amqp://app:**@rabbit:5672/prod" in repr(config)


def test_a_broker_url_that_is_not_a_url_is_not_echoed():
    with pytest.raises(ConfigError) as caught:
        Config(broker_url="app:hunter2-secret@rabbit")
    assert "hunter2-secret" not in str(caught.value)
