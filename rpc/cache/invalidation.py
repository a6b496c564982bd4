"""Dropping cache entries: from a handler, and when named events arrive.

Entries also expire by their TTL, and ``rpc cache invalidate`` drops them from the
shell (see :mod:`rpc.cache.commands`). All of it goes through the runner's
:class:`~rpc.cache.middleware.ResultCache`, which knows each method's signature
and policy, so an invalidation builds exactly the key the call would have.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import TYPE_CHECKING, Any

from rpc.cache.policy import Cache, InvalidateOn
from rpc.context import CallContext
from rpc.dependencies import Dependency, Runtime
from rpc.entrypoints import EventHandlerEntrypoint
from rpc.errors import CacheUnavailableError
from rpc.protocol import SERVICE_POOL
from rpc.serialization import JsonValue

if TYPE_CHECKING:
    from rpc.cache.middleware import ResultCache

log = logging.getLogger(__name__)

#: The signature of an invalidating event handler: the event's payload.
PAYLOAD_SIGNATURE = inspect.Signature(
    [inspect.Parameter("payload", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
)


@dataclasses.dataclass(frozen=True)
class InvalidateOnEvent:
    """The handler of one ``invalidate_on`` rule, run for each matching event.

    The runner's ResultCache answers it in its place (it holds the store); called
    without one, which only a test tool does, it does nothing.
    """

    method: str
    rule: InvalidateOn

    def __call__(self, instance: object, payload: JsonValue) -> None:
        return None


def invalidation_handlers(
    method: str, policy: Cache | None
) -> list[tuple[EventHandlerEntrypoint, InvalidateOnEvent]]:
    """The event handlers a cached method's ``invalidate_on`` rules need.

    Each is a service-pool handler: one worker of the service drops the entry from
    the shared cache, and events wait in a durable queue while no worker runs.
    """
    if policy is None:
        return []
    return [
        (
            EventHandlerEntrypoint(
                rule.handler_name(method),
                rule.source_service,
                (rule.event_type,),
                SERVICE_POOL,
            ),
            InvalidateOnEvent(method, rule),
        )
        for rule in policy.rules
    ]


class CachedResults(Dependency):
    """Drop cached results from a handler: ``self.cache.invalidate("get_user", 7)``.

    ``cache = CachedResults()`` on the service class. Arguments are given as the
    cached method takes them. ``invalidate`` returns True when an entry was
    dropped, False when there was none or the cache server could not be reached
    (the entry then lives until its TTL): it never fails the handler.
    """

    def get_dependency(self, runtime: Runtime, context: CallContext) -> CacheHandle:
        return CacheHandle(_result_cache_of(runtime), context.service)

    def __repr__(self) -> str:
        return "CachedResults()"


class CacheHandle:
    """What a :class:`CachedResults` dependency gives a handler."""

    __slots__ = ("_cache", "_service")

    def __init__(self, cache: ResultCache | None, service: str) -> None:
        self._cache = cache
        self._service = service

    def invalidate(self, method: str, *args: JsonValue, **kwargs: JsonValue) -> bool:
        """Drop the entry of ``method(*args, **kwargs)`` of this service.

        Raises ValueError when ``method`` is not cached, TypeError when the arguments
        do not fit it: those are mistakes in the calling code.
        """
        if self._cache is None:
            return False
        try:
            return self._cache.invalidate(self._service, method, list(args), kwargs)
        except CacheUnavailableError as exc:
            log.warning(
                "%s.%s: entry not invalidated, it expires by its TTL: %s",
                self._service,
                method,
                exc,
            )
            return False


def _result_cache_of(runtime: Runtime) -> ResultCache | None:
    from rpc.cache.middleware import ResultCache

    middleware: Any = getattr(runtime, "middleware", ())
    for candidate in middleware:
        if isinstance(candidate, ResultCache):
            return candidate
    return None
