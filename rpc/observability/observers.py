"""What a worker tells an observer about messages no middleware sees.

Middlewares see handler runs; an observer also hears of the messages settled
without one (refused, expired, dead-lettered), of redeliveries, of message sizes
and of the broker connection coming and going. The metrics of
:mod:`rpc.observability` are one. Every hook is a no-op here: a runner without an
observer calls the cold ones only, on paths that are rare, and binds the hot ones
(sizes) only when a subclass overrides them.
"""

from __future__ import annotations

from collections.abc import Callable

from rpc.transport import Delivery

#: Why a request was settled without running its handler.
INVALID = "invalid"
EXPIRED = "expired"
DEAD_LETTERED = "dead_lettered"


class WorkerObserver:
    """Base class with every hook a no-op: override the ones you need.

    Hooks run on the thread that settles the message or reads the socket: keep them
    quick, and never raise.
    """

    #: True when :meth:`received` and :meth:`replied` are overridden: the worker
    #: then measures every message (a cost on the hot path).
    measures_sizes: bool = False

    def received(self, service: str, size: int) -> None:
        """A request or event of ``size`` body bytes arrived for ``service``."""

    def replied(self, service: str, size: int) -> None:
        """A reply of ``size`` body bytes was published by ``service``."""

    def settled(self, service: str, method: str, kind: str, outcome: str) -> None:
        """A message was settled without a handler run: ``outcome`` says how."""

    def redelivered(self, service: str) -> None:
        """The broker handed a message of ``service`` out again."""

    def dead_lettered(self, service: str, reason: str) -> None:
        """A message of ``service`` went to its dead-letter queue, for ``reason``."""

    def cache_looked_up(self, service: str, method: str, result: str) -> None:
        """A call of a cached method was looked up: hit, miss, error or too_large."""

    def connected(self) -> None:
        """The worker's broker connection is up (again)."""

    def disconnected(self) -> None:
        """The worker's broker connection was lost."""


#: The observer of a runner given none.
QUIET = WorkerObserver()


def measured(
    callback: Callable[[Delivery], None], observer: WorkerObserver, service: str
) -> Callable[[Delivery], None]:
    """``callback``, telling ``observer`` the size of each delivery first."""
    received = observer.received

    def on_delivery(delivery: Delivery) -> None:
        received(service, len(delivery.body))
        callback(delivery)

    return on_delivery
