"""The worker side of the result cache: a middleware that answers hits, stores misses.

A runner whose services have cached methods gets one :class:`ResultCache`, after
the middlewares it was given (so authentication runs before a hit is served); a
runner without any gets none, and its calls pay nothing. For every call of a
cached method it builds the key, answers from the cache on a hit, and otherwise
lets the handler run and stores a successful result. Many callers missing one key
at once (across workers and hosts) wait for the first one's result under a short
lease taken with Memcached's ``add``, instead of all running the handler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from rpc import serialization
from rpc.cache import keys
from rpc.cache.backend import CacheBackend, fits
from rpc.cache.invalidation import InvalidateOnEvent
from rpc.cache.policy import Cache
from rpc.cache.stats import ERROR, HIT, MISS, TOO_LARGE, CacheStats
from rpc.config import Config
from rpc.errors import CacheUnavailableError, ConfigError, SerializationError
from rpc.middleware import Middleware, Outcome, ServerCall
from rpc.protocol import CACHE_INVALIDATE, CACHE_REFRESH, HEADER_CACHE
from rpc.serialization import JsonValue
from rpc.service import Handler, ServiceDefinition

log = logging.getLogger(__name__)

_STATE = "rpc.cache"
#: A leaseholder's value is looked for this often at first, then less often.
FIRST_POLL = 0.005
LAST_POLL = 0.05
LEASE_VALUE = b"1"

NO_SERVERS = (
    "%s: cached methods, but no cache_servers are configured: results are not cached"
)


@dataclasses.dataclass(slots=True)
class _Miss:
    """A lookup that let the handler run: where to store its result."""

    key: str
    policy: Cache
    #: What the call counts as if the store goes well (MISS, or ERROR).
    result: str = MISS
    #: The lease this call holds, to drop once the value is stored.
    lease: str | None = None


def policy_of(handler: Handler) -> Cache | None:
    """The cache policy of an ``@rpc`` handler, or None."""
    policy = getattr(handler.entrypoint, "cache", None)
    return policy if isinstance(policy, Cache) else None


class ResultCache(Middleware):
    """Answers calls of cached methods from ``backend`` and stores what they return.

    ``backend`` None caches nothing (no servers configured) but still answers
    invalidation events. ``stats`` counts every call of a cached method once.
    """

    def __init__(
        self, backend: CacheBackend | None, *, stats: CacheStats | None = None
    ) -> None:
        self.backend = backend
        self.stats = stats if stats is not None else CacheStats()
        self._methods: dict[tuple[str, str], Handler] = {}
        self._binders: dict[tuple[str, str], keys.ArgumentBinder] = {}
        self._unkeyable: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def serve(self, definitions: Iterable[ServiceDefinition]) -> None:
        """Learn the cached methods of these services (their signatures, policies)."""
        with self._lock:
            for definition in definitions:
                for name, handler in definition.rpc_handlers.items():
                    if policy_of(handler) is not None:
                        self._methods[definition.name, name] = handler

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()

    # -- the middleware hooks ------------------------------------------------------

    def before_handler(self, call: ServerCall) -> Outcome | None:
        handler = call.handler
        if isinstance(handler.function, InvalidateOnEvent):
            return self._on_event(call, handler.function)
        policy = policy_of(handler)
        backend = self.backend
        if policy is None or backend is None or call.kind != "call":
            return None
        request = call.context.request
        try:
            key = self.key_of(call.service, handler, request.args, request.kwargs)
        except Exception:
            self._log_unkeyable(call.service, handler.name)
            self.stats.count(call.service, handler.name, ERROR)
            return None
        command = call.headers.get(HEADER_CACHE)
        if command == CACHE_INVALIDATE:
            try:
                deleted = backend.delete(key)
            except CacheUnavailableError as exc:
                return Outcome(error=exc)
            return Outcome(result={"key": key, "deleted": deleted})
        miss = _Miss(key, policy)
        call.state[_STATE] = miss
        if command == CACHE_REFRESH:
            return None
        try:
            cached = self._lookup(call, backend, miss)
        except Exception:
            # CacheUnavailableError, or whatever a store of one's own raises: the
            # call goes on without the cache.
            miss.result = ERROR
            return None
        if cached is None:
            return None
        try:
            value = serialization.decode(cached)
        except SerializationError:
            miss.result = ERROR  # not ours, or damaged: overwritten with a fresh one
            return None
        del call.state[_STATE]
        self.stats.count(call.service, handler.name, HIT)
        return Outcome(result=value)

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        miss = call.state.pop(_STATE, None)
        if not isinstance(miss, _Miss):
            return
        result = miss.result
        backend = self.backend
        assert backend is not None
        try:
            if outcome.ok:
                value = serialization.encode(outcome.result)
                if fits(backend, miss.key, value):
                    backend.set(miss.key, value, miss.policy.expire)
                else:
                    result = TOO_LARGE
        except SerializationError:
            pass  # the reply fails the same way, and says so to the caller
        except Exception:
            result = ERROR
        finally:
            self.stats.count(call.service, call.method, result)
            if miss.lease is not None:
                # Waiters see the value (or, after an error, no lease) and stop.
                # Unreachable, it expires by itself in a few seconds.
                with contextlib.suppress(Exception):
                    backend.delete(miss.lease)

    # -- keys and lookups ----------------------------------------------------------

    def key_of(
        self,
        service: str,
        handler: Handler,
        args: Sequence[JsonValue],
        kwargs: Mapping[str, JsonValue],
    ) -> str:
        """The key of ``handler(*args, **kwargs)``; TypeError if they do not fit."""
        policy = policy_of(handler)
        if policy is None:
            raise ValueError(f"{service}.{handler.name} is not cached")
        binder = self._binders.get((service, handler.name))
        if binder is None or binder.signature is not handler.signature:
            binder = keys.ArgumentBinder(handler.signature)
            self._binders[service, handler.name] = binder
        arguments = binder.arguments(args, kwargs)
        return keys.entry_key(
            service, handler.name, policy, keys.canonical_arguments(policy, arguments)
        )

    def invalidate(
        self,
        service: str,
        method: str,
        args: Sequence[JsonValue],
        kwargs: Mapping[str, JsonValue],
    ) -> bool:
        """Drop the entry of ``service.method(*args, **kwargs)``: True if there was one.

        Raises ValueError for a method that is not cached, TypeError for arguments
        that do not fit it, CacheUnavailableError when the server does not answer.
        """
        handler = self._methods.get((service, method))
        if handler is None:
            raise ValueError(f"{service}.{method} is not a cached method")
        key = self.key_of(service, handler, args, kwargs)
        if self.backend is None:
            return False
        return self.backend.delete(key)

    def _lookup(
        self, call: ServerCall, backend: CacheBackend, miss: _Miss
    ) -> bytes | None:
        cached = backend.get(miss.key)
        if cached is not None or miss.policy.lease <= 0:
            return cached
        lease = keys.lease_key(miss.key)
        expire = math.ceil(miss.policy.lease)
        if backend.add(lease, LEASE_VALUE, expire):
            miss.lease = lease
            return None
        if call.context.asynchronous:
            return None  # waiting would stall the event loop: run it
        wait = miss.policy.lease
        remaining = call.context.remaining()
        if remaining is not None:
            wait = min(wait, remaining / 2)
        give_up = time.monotonic() + wait
        pause = FIRST_POLL
        while time.monotonic() + pause < give_up:
            time.sleep(pause)
            pause = min(pause * 2, LAST_POLL)
            found = backend.get_many([miss.key, lease])
            if miss.key in found:
                return found[miss.key]
            if lease not in found:
                # The holder failed, or stored and left between the two reads.
                cached = backend.get(miss.key)
                if cached is not None:
                    return cached
                if backend.add(lease, LEASE_VALUE, expire):
                    miss.lease = lease
                    return None
        return None

    def _on_event(self, call: ServerCall, handler: InvalidateOnEvent) -> Outcome:
        """Drop the entry an event names. What fails (a server that does not answer,
        a payload the key function cannot read) fails the event's handler run, so
        the event is retried, then dead-lettered, like any other."""
        payload = call.context.request.args[0] if call.context.request.args else None
        try:
            args, kwargs = handler.rule.entry_arguments(payload)
            self.invalidate(call.service, handler.method, args, kwargs)
        except Exception as exc:
            return Outcome(error=exc)
        return Outcome()

    def _log_unkeyable(self, service: str, method: str) -> None:
        with self._lock:
            first = (service, method) not in self._unkeyable
            self._unkeyable.add((service, method))
        if first:
            log.exception(
                "%s.%s: no cache key for these arguments: not cached", service, method
            )


def cache_middleware(
    definitions: Sequence[ServiceDefinition],
    config: Config,
    given: Sequence[Middleware],
) -> tuple[ResultCache, ...]:
    """What a runner adds for its services' cached methods: one ResultCache, or none.

    A ResultCache among ``given`` (made in code, on a store of one's choosing) is
    used instead; otherwise it is made from ``config.cache_servers``.
    """
    if not any(policy_of(h) for d in definitions for h in d.rpc_handlers.values()):
        return ()
    for middleware in given:
        if isinstance(middleware, ResultCache):
            middleware.serve(definitions)
            return ()
    backend: CacheBackend | None = None
    if config.cache_servers:
        try:
            from rpc.cache.memcached import MemcachedBackend
        except ImportError as exc:
            raise ConfigError(
                f"cache_servers needs pymemcache: pip install 'rpc[cache]' ({exc})"
            ) from exc
        backend = MemcachedBackend(
            config.cache_servers,
            timeout=config.cache_timeout,
            max_item_bytes=config.cache_max_item_bytes,
        )
    else:
        log.warning(NO_SERVERS, ", ".join(d.name for d in definitions))
    cache = ResultCache(backend)
    cache.serve(definitions)
    return (cache,)
