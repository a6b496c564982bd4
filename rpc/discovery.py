"""Discovery, from the caller's side: the workers' answers, and when to stop waiting.

Every worker answers a discovery request on the ``rpc.discovery`` fanout exchange.
Nobody knows how many workers run, so a caller collects answers until a quiet spell,
once every worker that answered the previous discovery has answered again. The
threaded and the asyncio proxies both wait this way; only how they wait differs.
"""

from __future__ import annotations

from rpc import serialization
from rpc.errors import SerializationError
from rpc.serialization import JsonValue
from rpc.transport import Delivery

#: Longest time a discovery collects answers, by default.
DISCOVERY_WAIT = 0.5
#: Seconds without a new answer after which discovery stops early, by default.
DISCOVERY_QUIET = 0.1


def read_answer(delivery: Delivery) -> JsonValue:
    """The answer a worker sent, or None when it cannot be read (it is skipped)."""
    try:
        return serialization.decode(delivery.body, delivery.content_type)
    except SerializationError:
        return None


class DiscoveryAnswers:
    """The answers to one discovery request, and when to stop waiting for more.

    I/O-free: times are whatever clock the caller reads, in seconds.
    """

    def __init__(
        self, known: frozenset[str], *, started: float, wait: float, quiet: float
    ) -> None:
        self.known = known
        self.give_up = started + max(wait, 0.0)
        self.quiet = max(quiet, 0.0)
        self.replies: list[JsonValue] = []
        self.workers: set[str] = set()
        self.last: float | None = None

    def add(self, reply: JsonValue, at: float) -> None:
        self.replies.append(reply)
        if isinstance(reply, dict) and isinstance(reply.get("worker"), str):
            self.workers.add(reply["worker"])
        self.last = at

    def done_at(self) -> float:
        """When to stop waiting: ``quiet`` after the last answer, else the bound.

        Only once every worker known from the previous discovery has answered: one
        that is slow to answer is not left out just because the others were quick.
        """
        if self.last is None or not self.known <= self.workers:
            return self.give_up
        return min(self.give_up, self.last + self.quiet)
