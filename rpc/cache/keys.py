"""Cache keys: service, method, version and a canonical JSON of the bound arguments.

``get_user(7)``, ``get_user(user_id=7)`` and ``get_user(7, verbose=False)`` (the
default spelled out) are one call, so they make one key. A key Memcached would
refuse (over 250 bytes, or with spaces, control or non-ASCII characters) is
replaced by a SHA-256 of it, which keeps the service and method readable.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from rpc.cache.policy import Cache
from rpc.serialization import JsonValue

#: Memcached's limit on the length of a key.
MAX_KEY_BYTES = 250
PREFIX = "rpc"
HASHED = "sha256"


def bound_arguments(
    signature: inspect.Signature,
    args: Sequence[JsonValue],
    kwargs: Mapping[str, JsonValue],
) -> inspect.BoundArguments:
    """The call's arguments by parameter name, defaults applied."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


def canonical_arguments(policy: Cache, bound: inspect.BoundArguments) -> bytes:
    """One JSON text per distinct call: by parameter name, object keys sorted.

    With a key function, its value stands for the arguments: it is called with
    every argument by name (the values of ``*args`` or ``**kwargs`` parameters
    under their own names).
    """
    value: Any = (
        dict(bound.arguments) if policy.key is None else policy.key(**bound.arguments)
    )
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def entry_key(service: str, method: str, policy: Cache, arguments: bytes) -> str:
    """The Memcached key of one entry (at most 250 ASCII bytes, no spaces)."""
    head = f"{PREFIX}:{service}:{method}:v{policy.version}:"
    text = arguments.decode("utf-8")
    key = head + text
    if _storable(key):
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    hashed = f"{head}{HASHED}:{digest}"
    if _storable(hashed):
        return hashed
    # Long service, method or version names: only the digest is left.
    return f"{PREFIX}:{HASHED}:{digest}"


def lease_key(key: str) -> str:
    """The key of the lease a miss takes while it computes ``key``'s value."""
    return f"{PREFIX}-lease:{hashlib.sha256(key.encode()).hexdigest()}"


def _storable(key: str) -> bool:
    return len(key) <= MAX_KEY_BYTES and all(" " < char < "\x7f" for char in key)
