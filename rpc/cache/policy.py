"""What a cached method declares: how long, under which key, and what makes it stale."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rpc.protocol import check_event_pattern, check_service_name
from rpc.serialization import JsonValue

#: Memcached reads an expiry over 30 days as a Unix timestamp, not as seconds.
MAX_TTL = 30 * 24 * 3600

#: What a key function of ``invalidate_on`` gives: the arguments of the entry to
#: drop, as a dict of keyword arguments or a list of positional ones.
Arguments = Mapping[str, JsonValue] | Sequence[JsonValue]

#: ``(source_service, event_type)``, optionally with a function from the event's
#: payload to the arguments whose entry it makes stale.
InvalidationRule = tuple[str, str] | tuple[str, str, Callable[[JsonValue], Arguments]]


@dataclasses.dataclass(frozen=True)
class InvalidateOn:
    """One kind of event that makes entries of a cached method stale."""

    source_service: str
    event_type: str
    #: From the event's payload to the arguments of the entry to drop; None: the
    #: payload itself (a dict is keyword arguments, a list positional ones, anything
    #: else the only argument).
    arguments: Callable[[JsonValue], Arguments] | None = None

    def entry_arguments(
        self, payload: JsonValue
    ) -> tuple[list[JsonValue], dict[str, JsonValue]]:
        """The ``(args, kwargs)`` of the call whose entry this event drops."""
        value: Any = payload if self.arguments is None else self.arguments(payload)
        if isinstance(value, Mapping):
            return [], dict(value)
        if isinstance(value, (list, tuple)):
            return list(value), {}
        return [value], {}

    def handler_name(self, method: str) -> str:
        """The name of the event handler that applies this rule, unique per rule.

        It names the handler's durable queue, so it depends on the rule alone, not on
        its place in the list.
        """
        rule = f"{self.source_service} {self.event_type}".encode()
        return f"{method}__invalidate_{hashlib.sha256(rule).hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class Cache:
    """How the results of one method are cached, the long form of ``cache=60``.

    ``@rpc(idempotent=True, cache=Cache(ttl=300, version=2))``. ``key`` is called
    with the method's arguments by name (defaults applied) and returns the JSON
    value that identifies an entry instead of all the arguments. Bump ``version``
    when the shape of the results changes: entries of other versions are never
    read again.
    ``invalidate_on`` names events that make entries stale. ``lease`` is how long
    a miss keeps others who miss the same key waiting for its result (0: nobody
    waits, everyone who misses runs the handler).
    """

    ttl: float = 60
    key: Callable[..., JsonValue] | None = None
    version: int | str = 1
    invalidate_on: Sequence[InvalidationRule | InvalidateOn] = ()
    lease: float = 3.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.ttl, bool)
            or not isinstance(self.ttl, (int, float))
            or not 1 <= self.ttl <= MAX_TTL
        ):
            raise ValueError(
                f"cache ttl must be 1 to {MAX_TTL} seconds, not {self.ttl!r}"
            )
        if self.key is not None and not callable(self.key):
            raise ValueError("cache key must be a function of the method's arguments")
        if isinstance(self.version, bool) or not isinstance(self.version, (int, str)):
            raise ValueError("cache version must be an int or a str")
        if not isinstance(self.lease, (int, float)) or not 0 <= self.lease <= 60:
            raise ValueError("cache lease must be 0 to 60 seconds")
        rules = tuple(_rule(rule) for rule in self.invalidate_on)
        object.__setattr__(self, "invalidate_on", rules)

    @property
    def expire(self) -> int:
        """The TTL in whole seconds, as Memcached takes it (rounded up)."""
        return math.ceil(self.ttl)

    @property
    def rules(self) -> tuple[InvalidateOn, ...]:
        return tuple(
            rule for rule in self.invalidate_on if isinstance(rule, InvalidateOn)
        )

    def describe(self) -> dict[str, Any]:
        """What discovery tells about it."""
        described: dict[str, Any] = {"ttl": self.ttl, "version": self.version}
        if self.rules:
            described["invalidate_on"] = [
                [rule.source_service, rule.event_type] for rule in self.rules
            ]
        return described


def _rule(rule: object) -> InvalidateOn:
    if isinstance(rule, InvalidateOn):
        return rule
    if not isinstance(rule, (tuple, list)) or len(rule) not in (2, 3):
        raise ValueError(
            "invalidate_on takes (source_service, event_type) pairs, optionally "
            f"with a key function as a third item, not {rule!r}"
        )
    source, event_type, *rest = rule
    if not isinstance(source, str) or not isinstance(event_type, str):
        raise ValueError(f"invalidate_on: names must be strings, not {rule!r}")
    check_service_name(source)
    check_event_pattern(event_type)
    arguments = rest[0] if rest else None
    if arguments is not None and not callable(arguments):
        raise ValueError("invalidate_on: the third item must be a function")
    return InvalidateOn(source, event_type, arguments)


def policy_of(cache: object) -> Cache | None:
    """The policy ``@rpc(cache=...)`` was given: seconds, a Cache, or None."""
    if cache is None or cache is False:
        return None
    if isinstance(cache, Cache):
        return cache
    if isinstance(cache, (int, float)) and not isinstance(cache, bool):
        return Cache(ttl=cache)
    raise ValueError(f"cache= takes seconds or a rpc.Cache, not {cache!r}")
