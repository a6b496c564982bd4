"""`rpc gateway-token`, `rpc broker permissions` and the gateway's secure default."""

from __future__ import annotations

import hashlib

import yaml
from click.testing import CliRunner

from rpc.cli import main
from rpc.gateway_access import parse_tokens
from rpc.permissions import operator


def test_a_new_token_is_shown_once_and_only_its_hash_is_kept():
    result = CliRunner().invoke(
        main, ["gateway-token", "shop", "--scope", "greeter.*", "--scope", "shop.order"]
    )
    assert result.exit_code == 0, result.output
    token = result.stderr.rsplit(": ", 1)[1].strip()
    entry = yaml.safe_load(result.stdout)
    assert entry[0]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in result.stdout
    registry = parse_tokens(entry, source="stdout")
    assert registry.identify(token).scopes == ("greeter.*", "shop.order")


def test_the_gateway_will_not_start_open_by_mistake():
    result = CliRunner().invoke(main, ["gateway", "--port", "0"])
    assert result.exit_code == 2
    assert "--allow-anonymous" in result.output


def test_permissions_take_the_user_and_vhost_from_the_url():
    result = CliRunner().invoke(
        main,
        ["broker", "permissions", "--role", "operator", "shop"],
        env={"RPC_BROKER_URL": "amqp://ops:pw@rabbit:5672/prod"},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == operator(["shop"]).commands("ops", "prod")
    assert "pw" not in result.stdout
