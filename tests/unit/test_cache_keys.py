"""Cache policies and keys: what ``@rpc(cache=...)`` takes, how entries are named."""

from __future__ import annotations

import inspect

import pytest

from rpc import Cache, Config, ConfigError, ServiceDefinitionError, rpc
from rpc.cache import keys
from rpc.cache.policy import InvalidateOn, policy_of
from rpc.cache.servers import parse_server
from rpc.service import ServiceDefinition


class Users:
    name = "users"

    @rpc(idempotent=True, cache=60)
    def get_user(self, user_id: int, verbose: bool = False) -> dict[str, object]:
        return {"id": user_id, "verbose": verbose}

    @rpc(
        idempotent=True, cache=Cache(ttl=5, version=2, key=lambda user_id, **_: user_id)
    )
    def name_of(self, user_id: int, lang: str = "en") -> str:
        return str(user_id)

    @rpc(idempotent=True, cache=Cache(ttl=5))
    def search(self, *terms: str, **filters: object) -> list[str]:
        return list(terms)


def key_of(method: str, *args: object, **kwargs: object) -> str:
    definition = ServiceDefinition.from_class(Users)
    handler = definition.rpc_handlers[method]
    policy = handler.entrypoint.cache  # type: ignore[attr-defined]
    arguments = keys.ArgumentBinder(handler.signature).arguments(list(args), kwargs)
    return keys.entry_key(
        "users", method, policy, keys.canonical_arguments(policy, arguments)
    )


def test_positional_keyword_and_default_forms_of_one_call_make_one_key():
    forms = {
        key_of("get_user", 7),
        key_of("get_user", user_id=7),
        key_of("get_user", 7, False),
        key_of("get_user", verbose=False, user_id=7),
    }
    assert forms == {'rpc:users:get_user:v1:{"user_id":7,"verbose":false}'}
    assert key_of("get_user", 7, True) != key_of("get_user", 7)
    assert key_of("get_user", 8) != key_of("get_user", 7)


def test_object_keys_are_sorted_at_every_depth():
    assert key_of("search", tag={"b": 1, "a": [{"y": 2, "x": 1}]}) == key_of(
        "search", tag={"a": [{"x": 1, "y": 2}], "b": 1}
    )


def test_the_key_function_and_the_version_shape_the_key():
    assert key_of("name_of", 7) == "rpc:users:name_of:v2:7"
    assert key_of("name_of", 7, lang="fr") == key_of("name_of", user_id=7)


def test_a_key_memcached_would_refuse_is_hashed_and_stays_short():
    long = key_of("get_user", "x" * 10_000)
    spaced = key_of("get_user", "ada lovelace")
    unicode = key_of("get_user", "Zoë 東京")
    for key in (long, spaced, unicode):
        head, _, digest = key.rpartition(":")
        assert head == "rpc:users:get_user:v1:sha256"
        assert len(digest) == 64 and len(key) <= keys.MAX_KEY_BYTES
        assert all(" " < c < "\x7f" for c in key)
    assert len({long, spaced, unicode, key_of("get_user", "Zoë 東京!")}) == 4


def test_a_readable_key_of_exactly_250_bytes_is_kept_and_251_is_hashed():
    base = len(key_of("get_user", ""))
    fits = key_of("get_user", "x" * (keys.MAX_KEY_BYTES - base))
    over = key_of("get_user", "x" * (keys.MAX_KEY_BYTES - base + 1))
    assert len(fits) == keys.MAX_KEY_BYTES and "sha256" not in fits
    assert "sha256" in over


def test_very_long_names_leave_only_the_digest():
    policy = Cache(version="v" * 300)
    key = keys.entry_key("users", "get_user", policy, b"1")
    assert key.startswith("rpc:sha256:") and len(key) == len("rpc:sha256:") + 64


def test_the_lease_key_differs_from_the_entry_and_fits():
    key = key_of("get_user", 7)
    lease = keys.lease_key(key)
    assert lease != key and len(lease) <= keys.MAX_KEY_BYTES


def test_a_cached_method_must_be_idempotent():
    with pytest.raises(ServiceDefinitionError, match="not idempotent"):

        class Orders:
            name = "orders"

            @rpc(cache=60)
            def place(self, item: str) -> None: ...


def test_defaults_of_a_cached_method_must_be_json():
    with pytest.raises(ServiceDefinitionError, match="default of 'when'"):

        class Clock:
            name = "clock"

            @rpc(idempotent=True, cache=60)
            def at(self, when: object = object()) -> None: ...


@pytest.mark.parametrize("bad", [0, -1, 31 * 24 * 3600, "60", True])
def test_bad_ttls_are_refused(bad):
    with pytest.raises(ValueError, match="ttl"):
        Cache(ttl=bad)


def test_policy_forms():
    assert policy_of(None) is None
    assert policy_of(60) == Cache(ttl=60)
    policy = Cache(ttl=1.5)
    assert policy_of(policy) is policy and policy.expire == 2
    with pytest.raises(ValueError):
        policy_of("soon")


def test_invalidate_on_rules_are_checked_and_read():
    policy = Cache(
        invalidate_on=[
            ("users", "users.updated"),
            ("billing", "plans.*", lambda payload: {"user_id": payload["user"]}),
        ]
    )
    plain, mapped = policy.rules
    assert plain == InvalidateOn("users", "users.updated")
    assert plain.entry_arguments({"user_id": 3}) == ([], {"user_id": 3})
    assert plain.entry_arguments([3, True]) == ([3, True], {})
    assert plain.entry_arguments(3) == ([3], {})
    assert mapped.entry_arguments({"user": 9}) == ([], {"user_id": 9})
    assert plain.handler_name("get_user") != mapped.handler_name("get_user")
    assert plain.handler_name("get_user") == InvalidateOn(
        "users", "users.updated"
    ).handler_name("get_user")
    for bad in [("users",), ("bad name", "x"), ("users", "a..b"), ("u", "x", 3)]:
        with pytest.raises(ValueError):
            Cache(invalidate_on=[bad])


def test_discovery_describes_the_policy():
    described = ServiceDefinition.from_class(Users).describe()["methods"]["get_user"]
    assert described["cache"] == {"ttl": 60, "version": 1}


def test_invalidate_on_adds_one_event_handler_per_rule():
    class Profiles:
        name = "profiles"

        @rpc(
            idempotent=True,
            cache=Cache(invalidate_on=[("users", "users.updated"), ("users", "x.#")]),
        )
        def profile(self, user_id: int) -> int:
            return user_id

    definition = ServiceDefinition.from_class(Profiles)
    assert list(definition.rpc_handlers) == ["profile"]
    events = [h.entrypoint for h in definition.other_handlers]
    assert [(e.source_service, e.event_types) for e in events] == [  # type: ignore[attr-defined]
        ("users", ("users.updated",)),
        ("users", ("x.#",)),
    ]
    assert all(e.method_name.startswith("profile__invalidate_") for e in events)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1:11212", ("10.0.0.1", 11212)),
        ("cache.internal", ("cache.internal", 11211)),
        (" memcached-1:11211 ", ("memcached-1", 11211)),
        ("[::1]:11300", ("::1", 11300)),
        ("[::1]", ("::1", 11211)),
    ],
)
def test_server_addresses(address, expected):
    assert parse_server(address) == expected


@pytest.mark.parametrize("address", ["", ":11211", "host:port", "host:0", "h:70000"])
def test_bad_server_addresses_are_config_errors(address):
    with pytest.raises(ConfigError, match="cache_servers"):
        parse_server(address)


def test_cache_servers_come_from_a_list_or_a_comma_separated_variable():
    assert Config(cache_servers=["a:1", "b:2"]).cache_servers == ("a:1", "b:2")
    loaded = Config.load(environ={"RPC_CACHE_SERVERS": "a:1, b:2,"})
    assert loaded.cache_servers == ("a:1", "b:2")
    assert Config().cache_servers == ()
    with pytest.raises(ConfigError):
        Config(cache_timeout=0)


def test_the_quick_binding_agrees_with_the_signature():
    def plain(a, b=2, c=None): ...

    def odd(a, /, b, *rest, c=3, **more): ...

    for function, calls in [
        (plain, [([1], {}), ([1, 5], {}), ([], {"a": 1, "c": [1]}), ([1], {"c": 4})]),
        (odd, [([1, 2], {}), ([1, 2, 3, 4], {"c": 5, "z": 6})]),
    ]:
        signature = inspect.signature(function)
        binder = keys.ArgumentBinder(signature)
        for args, kwargs in calls:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            assert binder.arguments(args, kwargs) == dict(bound.arguments)
    binder = keys.ArgumentBinder(inspect.signature(plain))
    for args, kwargs in [([1, 2, 3, 4], {}), ([1], {"a": 1}), ([], {"x": 1}), ([], {})]:
        with pytest.raises(TypeError):
            binder.arguments(args, kwargs)
