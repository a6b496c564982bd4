"""The service the benchmarks call, written as a user would: no-op, echo, sinks."""

from __future__ import annotations

import collections
import threading

from rpc import event_handler, rpc

#: Events the benchmark dispatches come from this source.
EVENT_SOURCE = "benchsource"
EVENT_TYPE = "tick"

# Per process: a fresh service instance serves every call.
_seen: collections.Counter[str] = collections.Counter()
_seen_lock = threading.Lock()


def _count(kind: str) -> None:
    with _seen_lock:
        _seen[kind] += 1


class Bench:
    name = "bench"

    @rpc
    def noop(self) -> None:
        """Do nothing: what is left is the cost of the call itself."""

    @rpc
    def echo(self, data: str) -> str:
        """Send the payload back, for round trips with large bodies."""
        return data

    @rpc
    def sink(self, number: int) -> None:
        """Target of casts: only counts them."""
        _count("casts")

    @event_handler(EVENT_SOURCE, EVENT_TYPE)
    def on_tick(self, payload: int) -> None:
        """Subscriber of the benchmark's events: only counts them."""
        _count("events")

    @rpc
    def seen(self) -> dict[str, int]:
        """Casts and events this process has consumed so far."""
        with _seen_lock:
            return dict(_seen)
