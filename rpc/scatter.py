"""Scatter-gather: many calls of one method in flight at once, results in input order.

The calls go to the service's shared queue, so its workers, on any number of hosts,
take them as they become free; a bounded window of calls in flight keeps a long
input from flooding the queue or the caller's memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from rpc.serialization import JsonValue

#: Calls in flight at once unless the caller says otherwise.
DEFAULT_MAX_IN_FLIGHT = 64
#: Longest sleep between two looks at the calls in flight, in seconds.
POLL = 1.0


class Pending(Protocol):
    """What scatter-gather needs of a call in flight (an RpcFuture)."""

    deadline: float

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> JsonValue: ...

    def cancel(self) -> bool: ...

    def add_done_callback(self, callback: Callable[..., None]) -> None: ...


Arguments = tuple[Sequence[JsonValue], Mapping[str, JsonValue]]
Submit = Callable[[Sequence[JsonValue], Mapping[str, JsonValue]], Pending]


def gather(
    submit: Submit,
    calls: Iterable[Arguments],
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    return_exceptions: bool = False,
) -> Iterator[JsonValue | Exception]:
    """Yield the result of every call, in the order of ``calls``.

    At most ``max_in_flight`` calls wait for their reply at any time. The first
    call to fail (in the order failures arrive, not the input order) raises its
    error and cancels the rest, unless ``return_exceptions``: then the exception
    object is yielded in the failed call's place and the other calls go on.
    Cancelling forgets a call's reply; a request a worker has already taken
    still runs there.
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    source = iter(calls)
    pending: dict[int, Pending] = {}
    outcomes: dict[int, tuple[bool, JsonValue | Exception]] = {}
    ready = threading.Event()
    submitted = yielded = 0
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) + len(outcomes) < max_in_flight:
                try:
                    args, kwargs = next(source)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    future = submit(args, kwargs)
                except Exception as exc:  # bad arguments, no broker: that item fails
                    outcomes[submitted] = (False, exc)
                else:
                    future.add_done_callback(lambda _: ready.set())
                    pending[submitted] = future
                submitted += 1
            if yielded in outcomes:
                ok, value = outcomes.pop(yielded)
                yielded += 1
                if not ok and not return_exceptions:
                    assert isinstance(value, Exception)
                    raise value
                yield value
                continue
            if not pending:
                return
            ready.wait(POLL)
            ready.clear()
            now = time.time()
            for index, future in list(pending.items()):
                if not future.done() and future.deadline > now:
                    continue
                del pending[index]
                try:
                    outcomes[index] = (True, future.result())
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    outcomes[index] = (False, exc)
    finally:
        for future in pending.values():
            future.cancel()


def as_arguments(item: object) -> Arguments:
    """``starmap`` items: a list or tuple of arguments, or a dict of keyword ones."""
    if isinstance(item, Mapping):
        return (), dict(item)
    if isinstance(item, (list, tuple)):
        return tuple(item), {}
    raise TypeError(
        f"starmap items are argument lists or keyword dicts, not {type(item).__name__}"
    )
