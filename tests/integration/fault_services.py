"""Services that misbehave on purpose, for the supervisor and poison-message tests."""

from __future__ import annotations

import gc
import os
import signal
import time
from pathlib import Path

from rpc import BROADCAST, SINGLETON, CurrentCall, event_handler, rpc
from rpc.transport.link import Link
from tests.integration.sample_services import WhoAmI


class Faulty(WhoAmI):
    name = "faulty"
    call = CurrentCall()

    @rpc
    def hold(self, marker: str, seconds: float) -> dict[str, object]:
        """Announce this worker's pid in the file ``marker``, then work ``seconds``."""
        Path(marker).write_text(str(os.getpid()))
        time.sleep(seconds)
        return {
            "pid": os.getpid(),
            "redelivered": self.call.redelivered,
            "delivery_count": self.call.request.delivery_count,
        }

    @rpc
    def die(self, marker: str) -> None:
        """Poison: append this pid to ``marker``, then kill the process running it."""
        with open(marker, "a") as log:
            log.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    @rpc
    def record(self, marker: str, value: object) -> None:
        """For casts: append ``value`` to ``marker``."""
        with open(marker, "a") as log:
            log.write(f"{value}\n")

    @rpc
    def act(self, order: dict[str, str]) -> None:
        """For casts: do what ``order`` says, as :class:`FaultyEvents` does."""
        _act(order)

    @rpc
    def slow(self, seconds: float, padding: str = "") -> int:
        """A slow handler whose requests can be made bulky with ``padding``."""
        time.sleep(seconds)
        return len(padding)


class FaultyEvents:
    """Event handlers that do what each event says: its payload is a dict with

    ``marker`` (a file each run appends "<pid> <value>" to), ``value``, and ``do``:
    ``"die"`` kills the worker, ``"raise"`` raises, ``"raise-while"`` raises while
    the file ``switch`` exists, ``"fail-once"`` raises on the value's first run,
    ``"raise-then-die"`` raises on the first run and kills the worker on the others,
    anything else returns.
    """

    name = "faulty_events"

    @event_handler("tests", "pool.#")
    def on_pool(self, event: dict[str, str]) -> None:
        _act(event)

    @event_handler("tests", "singleton.#", handler_type=SINGLETON)
    def on_singleton(self, event: dict[str, str]) -> None:
        _act(event)

    @event_handler("tests", "broadcast.#", handler_type=BROADCAST)
    def on_broadcast(self, event: dict[str, str]) -> None:
        _act(event)


def _act(event: dict[str, str]) -> None:
    action, marker = event.get("do"), Path(event["marker"])
    # Decided before the run is recorded: a test that saw the run may then fix it.
    first = not _ran_before(marker, event["value"])
    fails = (
        action == "raise"
        or (action == "raise-while" and Path(event["switch"]).exists())
        or (action in ("fail-once", "raise-then-die") and first)
    )
    with marker.open("a") as log:
        log.write(f"{os.getpid()} {event['value']}\n")
    if action == "die" or (action == "raise-then-die" and not first):
        os._exit(1)
    if fails:
        raise RuntimeError(f"cannot handle {event['value']}")


def _ran_before(marker: Path, value: str) -> bool:
    lines = marker.read_text().splitlines() if marker.exists() else []
    return any(line.split()[1] == value for line in lines)


class DeafWorker:
    """A worker whose connection's reader is made to die on request."""

    name = "deaf"

    @rpc
    def echo(self, value: object = None) -> object:
        return value

    @rpc
    def break_reader(self) -> None:
        """For a cast: make this worker's I/O thread die, as a bug in it would.

        The link is marked broken, and what handles that raises where nothing
        catches it: the thread ends by an exception.
        """
        for link in [o for o in gc.get_objects() if isinstance(o, Link)]:

            def lost(exc: BaseException) -> None:
                raise RuntimeError("a bug in the reconnection (injected by a test)")

            link._lost = lost  # type: ignore[method-assign]
            link.failed(OSError("cut by a test"))
