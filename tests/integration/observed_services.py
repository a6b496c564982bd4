"""A service whose calls, casts and events succeed or fail on request: its metrics,
logs and status are read back by the observability tests."""

from __future__ import annotations

import os
import time

from rpc import event_handler, rpc

SOURCE = "observer"


class Counted:
    name = "counted"

    @rpc
    def ok(self, value: int) -> int:
        return value

    @rpc
    def fail(self) -> None:
        raise ValueError("asked to fail")

    @rpc
    def pause(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @rpc
    def whoami(self) -> int:
        return os.getpid()

    @rpc
    def note(self, fail: bool = False) -> None:
        """Cast to: raises when asked, so the failure policy runs it again."""
        if fail:
            raise RuntimeError("asked to fail")

    @event_handler(SOURCE, "ping")
    def on_ping(self, payload: object) -> None:
        return None
