"""Gateway tokens: the tokens file, scopes, constant-time lookup, what is shown."""

from __future__ import annotations

import hashlib

import pytest

from rpc import ConfigError
from rpc.gateway_access import (
    GatewayAccess,
    TokenRegistry,
    check_scope,
    load_tokens,
    parse_tokens,
    scope_matches,
)

SECRET = "a-long-enough-secret-0123456789"


@pytest.mark.parametrize(
    ("pattern", "service", "method", "matches"),
    [
        ("greeter.*", "greeter", "hello", True),
        ("greeter.*", "shop", "hello", False),
        ("shop.order", "shop", "order", True),
        ("shop.order", "shop", "refund", False),
        ("*.ping", "compute", "ping", True),
        ("*", "anything", "at_all", True),
    ],
)
def test_scopes(pattern, service, method, matches):
    assert scope_matches(check_scope(pattern), service, method) is matches


@pytest.mark.parametrize(
    "pattern", ["greeter", "gre.et.er", "greeter.not-a-method", ""]
)
def test_bad_scopes_are_refused(pattern):
    with pytest.raises(ValueError):
        check_scope(pattern)


def test_tokens_by_hash_or_by_secret_are_found_by_their_secret(tmp_path):
    path = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(b"another-secret-of-some-length").hexdigest()
    path.write_text(
        "tokens:\n"
        f"  - name: shop-frontend\n    token: {SECRET}\n    scopes: ['shop.*']\n"
        f"  - name: reports\n    sha256: {digest}\n    scopes: [greeter.hello]\n"
        "    rate: 5\n    burst: 10\n    max_concurrent: 2\n"
    )
    registry = load_tokens(path)
    assert registry.identify(SECRET).name == "shop-frontend"
    reports = registry.identify("another-secret-of-some-length")
    assert reports.name == "reports" and reports.max_concurrent == 2
    assert reports.rate.rate == 5 and reports.rate.burst == 10
    assert registry.identify("a-guess") is None
    assert registry.identify(SECRET[:-1]) is None
    assert SECRET not in repr(registry.tokens)


def test_json_tokens_from_the_environment():
    document = f'[{{"name": "ci", "token": "{SECRET}", "scopes": "*"}}]'
    registry = load_tokens(environ={"RPC_GATEWAY_TOKENS": document})
    assert registry.identify(SECRET).scopes == ("*",)
    assert len(load_tokens(environ={})) == 0


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ([{"name": "x", "scopes": ["*"]}], "either sha256 or token"),
        ([{"name": "x", "token": "short", "scopes": ["*"]}], "16 or more"),
        ([{"name": "x", "sha256": "abc", "scopes": ["*"]}], "64 hexadecimal"),
        ([{"name": "x", "token": SECRET}], "needs scopes"),
        ([{"token": SECRET, "scopes": ["*"]}], "needs a name"),
        ([{"name": "x", "token": SECRET, "scopes": ["*"], "admin": True}], "unknown"),
        (
            [
                {"name": "x", "token": SECRET, "scopes": ["*"]},
                {"name": "x", "token": SECRET + "2", "scopes": ["*"]},
            ],
            "same name",
        ),
        ("not a list", "a list of tokens"),
    ],
)
def test_a_bad_tokens_file_is_refused_without_quoting_secrets(document, complaint):
    with pytest.raises(ConfigError, match=complaint) as caught:
        parse_tokens(document, source="tokens.yaml")
    assert SECRET not in str(caught.value)


def test_an_unreadable_document_is_refused_without_quoting_it():
    with pytest.raises(ConfigError) as caught:
        load_tokens(environ={"RPC_GATEWAY_TOKENS": f"[{{name: x, token: {SECRET}"})
    assert SECRET not in str(caught.value)


def test_the_listing_shows_what_is_exposed_and_in_the_tokens_scope():
    registry = parse_tokens(
        [{"name": "a", "token": SECRET, "scopes": ["greeter.*", "shop.order"]}],
        source="t",
    )
    token = registry.identify(SECRET)
    access = GatewayAccess(tokens=registry, expose=("greeter.hello", "shop.*"))
    listing = {
        "greeter": {"methods": {"hello": {}, "secret": {}}, "workers": 1},
        "shop": {"methods": {"order": {}, "refund": {}}, "workers": 2},
        "admin": {"methods": {"drop": {}}, "workers": 1},
    }
    assert access.visible(listing, token) == {
        "greeter": {"methods": {"hello": {}}, "workers": 1},
        "shop": {"methods": {"order": {}}, "workers": 2},
    }
    assert set(access.visible(listing, None)["shop"]["methods"]) == {"order", "refund"}


def test_the_default_policy_refuses_everyone():
    assert GatewayAccess().refuses_everyone
    assert not GatewayAccess(allow_anonymous=True).refuses_everyone
    assert not GatewayAccess(tokens=TokenRegistry()).allow_anonymous
