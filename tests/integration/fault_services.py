"""Services that misbehave on purpose, for the supervisor and poison-message tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from rpc import CurrentCall, rpc


class Faulty:
    name = "faulty"
    call = CurrentCall()

    @rpc
    def whoami(self) -> int:
        return os.getpid()

    @rpc
    def slow_whoami(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

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
    def slow(self, seconds: float, padding: str = "") -> int:
        """A slow handler whose requests can be made bulky with ``padding``."""
        time.sleep(seconds)
        return len(padding)
