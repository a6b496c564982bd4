"""Hypothesis strategies for hostile AMQP messages: properties, headers and bodies.

Most of what they make is valid AMQP that a careless consumer cannot read: short
strings that are not UTF-8, timestamps past what ``datetime`` holds, tables nested
thousands deep, framework headers of the wrong type, deadlines far in the future or
not numbers at all, bodies that are not JSON or are pickle. Some of it RabbitMQ itself
refuses (a ``user_id`` not the publisher's, an ``expiration`` that is not a number);
the fuzzer counts those and goes on.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import time
from typing import Any

import orjson
from hypothesis import strategies as st

from rpc import protocol

SERVICE = "fuzz"
EVENT_SOURCE = "fuzzsrc"

#: Headers the framework reads: each gets hostile values more often than chance.
FRAMEWORK_HEADERS = (
    protocol.HEADER_METHOD,
    protocol.HEADER_DEADLINE,
    protocol.HEADER_VERSION,
    protocol.HEADER_CALLER,
    protocol.HEADER_DELIVERY_COUNT,
    protocol.HEADER_SHARD_KEY,
    protocol.HEADER_EVENT_SOURCE,
    protocol.HEADER_EVENT_TYPE,
    "x-death",
    "x-delivery-count",
    "x-first-death-reason",
)


@dataclasses.dataclass(frozen=True)
class Message:
    """One message as the fuzzer publishes it."""

    exchange: bytes
    routing_key: bytes
    properties: dict[str, Any]
    body: bytes


def _invalid_utf8() -> st.SearchStrategy[bytes]:
    return st.sampled_from(
        [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"abc\x80def", b"\xf8\x88\x80\x80\x80"]
    )


def short_strings() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(max_size=40).map(lambda s: s.encode()[:255]),
        st.binary(max_size=64),
        _invalid_utf8(),
        st.just(b"x" * 255),
    )


def _ints(kind: str, low: int, high: int) -> st.SearchStrategy[tuple[str, Any]]:
    edges = st.sampled_from([low, high, 0, -1 if low < 0 else 1])
    return st.tuples(st.just(kind), st.one_of(edges, st.integers(low, high)))


def _scalars() -> st.SearchStrategy[tuple[str, Any]]:
    floats = st.floats(allow_nan=True, allow_infinity=True)
    return st.one_of(
        st.tuples(st.just("t"), st.booleans()),
        _ints("b", -(2**7), 2**7 - 1),
        _ints("B", 0, 2**8 - 1),
        _ints("s", -(2**15), 2**15 - 1),
        _ints("u", 0, 2**16 - 1),
        _ints("I", -(2**31), 2**31 - 1),
        _ints("i", 0, 2**32 - 1),
        _ints("l", -(2**63), 2**63 - 1),
        # Timestamps: seconds since 1970, far past year 9999 included.
        _ints("T", 0, 2**64 - 1),
        st.tuples(
            st.just("f"), floats.filter(lambda f: math.isnan(f) or abs(f) < 3e38)
        ),
        st.tuples(st.just("d"), floats),
        st.tuples(
            st.just("D"),
            st.tuples(st.integers(0, 255), st.integers(-(2**31), 2**31 - 1)),
        ),
        st.tuples(st.just("S"), st.one_of(st.binary(max_size=64), _invalid_utf8())),
        st.tuples(st.just("x"), st.binary(max_size=64)),
        st.just(("V", None)),
    )


def field_values() -> st.SearchStrategy[tuple[str, Any]]:
    """Any field value: scalars, arrays and tables of them, or nesting 50-5000 deep."""
    nested = st.recursive(
        _scalars(),
        lambda inner: st.one_of(
            st.tuples(st.just("A"), st.lists(inner, max_size=4)),
            st.tuples(
                st.just("F"), st.lists(st.tuples(short_strings(), inner), max_size=4)
            ),
        ),
        max_leaves=12,
    )
    deep = st.tuples(
        st.just("deep"),
        st.tuples(st.sampled_from(["F", "A"]), st.integers(50, 5000), _scalars()),
    )
    return st.one_of(nested, nested, nested, deep)


def _deadlines() -> st.SearchStrategy[tuple[str, Any]]:
    now = time.time()
    return st.one_of(
        st.tuples(st.just("d"), st.sampled_from([now + 30, now - 30, now + 1e12])),
        st.tuples(st.just("d"), st.floats(allow_nan=True, allow_infinity=True)),
        st.tuples(st.just("t"), st.booleans()),
        st.tuples(
            st.just("l"), st.sampled_from([0, 1, 2**62, -(2**62), int(now) + 60])
        ),
        st.tuples(st.just("S"), st.sampled_from([b"soon", str(now + 60).encode()])),
        st.tuples(st.just("F"), st.just([])),
    )


def headers() -> st.SearchStrategy[list[tuple[bytes, tuple[str, Any]]]]:
    framework = st.tuples(
        st.sampled_from(FRAMEWORK_HEADERS).map(str.encode),
        st.one_of(field_values(), _method_names()),
    )
    deadline = st.tuples(st.just(protocol.HEADER_DEADLINE.encode()), _deadlines())
    other = st.tuples(short_strings(), field_values())
    return st.lists(st.one_of(framework, deadline, other), max_size=6)


def _method_names() -> st.SearchStrategy[tuple[str, Any]]:
    names = [b"echo", b"sink", b"nope", b"__init__", b"__class__", b"_private", b""]
    return st.tuples(st.just("S"), st.one_of(st.sampled_from(names), short_strings()))


def properties(reply_to: bytes) -> st.SearchStrategy[dict[str, Any]]:
    content_types = st.one_of(
        st.sampled_from(
            [
                b"application/json",
                b"application/json; charset=utf-8",
                b"APPLICATION/JSON",
                b"text/plain",
                b"application/x-python-serialize",
                b"application/octet-stream",
                b"",
            ]
        ),
        short_strings(),
    )
    encodings = st.one_of(
        st.sampled_from([b"utf-8", b"gzip", b"binary", b"", b"zlib"]), short_strings()
    )
    optional = {
        "content_type": content_types,
        "content_encoding": encodings,
        "headers": headers(),
        "delivery_mode": st.integers(0, 255),
        "priority": st.integers(0, 255),
        "correlation_id": short_strings(),
        "reply_to": st.one_of(st.just(reply_to), short_strings()),
        # ASCII only: RabbitMQ quotes a bad expiration in its error, and py-amqp
        # (the fuzzer's own client) cannot read an error that is not UTF-8.
        "expiration": st.one_of(
            st.sampled_from([b"60000", b"0", b"1", b"999999999999", b"-5"]),
            st.text("0123456789abc.-", max_size=20).map(str.encode),
        ),
        "message_id": short_strings(),
        "timestamp": st.one_of(st.integers(0, 2**64 - 1), st.just(int(time.time()))),
        "type": short_strings(),
        "user_id": st.sampled_from([b"guest", b"someone-else"]),
        "app_id": short_strings(),
        "cluster_id": short_strings(),
    }
    return st.fixed_dictionaries(
        {},
        optional=optional,  # type: ignore[arg-type]
    )


def _deeply_nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def bodies() -> st.SearchStrategy[bytes]:
    json_values = st.recursive(
        st.none()
        | st.booleans()
        # What orjson writes; bigger numbers come in the raw bodies below.
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    )
    requests = st.fixed_dictionaries(
        {},
        optional={
            "args": st.one_of(st.lists(json_values, max_size=3), json_values),
            "kwargs": st.one_of(
                st.dictionaries(st.text(max_size=8), json_values, max_size=3),
                json_values,
            ),
        },
    ).map(lambda request: orjson.dumps(request, option=orjson.OPT_NON_STR_KEYS))
    return st.one_of(
        requests,
        requests,
        st.binary(max_size=256),
        st.just(pickle.dumps({"args": [1], "kwargs": {}})),
        st.integers(1, 2000).map(_deeply_nested_json),
        st.just(b'{"args": [' + b"1," * 10000 + b"1]}"),
        st.just(b'{"args": [1e400]}'),
        st.just(b'{"args": [' + b"9" * 400 + b"]}"),
        st.just(b'{"args": ["\\ud800"]}'),
    )


def messages(reply_to: bytes) -> st.SearchStrategy[Message]:
    """Messages for the fuzzed service's queue, its methods and its events."""
    service_keys = st.sampled_from(
        [b"fuzz.echo", b"fuzz.sink", b"fuzz.nope", b"fuzz.__init__", b"fuzz._private"]
    )
    requests = st.builds(
        Message,
        exchange=st.just(protocol.RPC_EXCHANGE.encode()),
        routing_key=service_keys,
        properties=properties(reply_to),
        body=bodies(),
    )
    direct = st.builds(
        Message,
        exchange=st.just(b""),
        routing_key=st.just(protocol.service_queue(SERVICE).encode()),
        properties=properties(reply_to),
        body=bodies(),
    )
    events = st.builds(
        Message,
        exchange=st.just(protocol.EVENTS_EXCHANGE.encode()),
        routing_key=st.sampled_from([b"fuzzsrc.happened", b"fuzzsrc.x.y"]),
        properties=properties(reply_to),
        body=bodies(),
    )
    return st.one_of(requests, requests, direct, events)
