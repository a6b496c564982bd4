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


class ArgumentBinder:
    """Names a call's arguments as the method's signature would, defaults applied.

    For the usual signature (plain parameters, no ``*args``, ``**kwargs``,
    positional-only or keyword-only ones) it matches them by position and name
    directly, several times quicker than ``Signature.bind``, which it falls back to
    for anything else (and which raises TypeError for arguments that do not fit).
    """

    __slots__ = ("_defaults", "_known", "_names", "_plain", "signature")

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature
        parameters = list(signature.parameters.values())
        self._plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in parameters)
        self._names = tuple(p.name for p in parameters)
        self._known = frozenset(self._names)
        self._defaults = {
            p.name: p.default for p in parameters if p.default is not p.empty
        }

    def arguments(
        self, args: Sequence[JsonValue], kwargs: Mapping[str, JsonValue]
    ) -> dict[str, Any]:
        """Every parameter's value, by name; TypeError if the arguments do not fit."""
        named = self._match(args, kwargs)
        if named is not None:
            return named
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def _match(
        self, args: Sequence[JsonValue], kwargs: Mapping[str, JsonValue]
    ) -> dict[str, Any] | None:
        if not self._plain or len(args) > len(self._names):
            return None
        named: dict[str, Any] = dict(zip(self._names, args, strict=False))
        for name, value in kwargs.items():
            if name in named or name not in self._known:
                return None
            named[name] = value
        for name, default in self._defaults.items():
            named.setdefault(name, default)
        return named if len(named) == len(self._names) else None


def canonical_arguments(policy: Cache, arguments: Mapping[str, Any]) -> bytes:
    """One JSON text per distinct call: by parameter name, object keys sorted.

    With a key function, its value stands for the arguments: it is called with
    every argument by name (the values of ``*args`` or ``**kwargs`` parameters
    under their own names).
    """
    value: Any = arguments if policy.key is None else policy.key(**arguments)
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
    # Printable ASCII without spaces: what Memcached's text protocol takes.
    return (
        len(key) <= MAX_KEY_BYTES
        and key.isascii()
        and key.isprintable()
        and " " not in key
    )
