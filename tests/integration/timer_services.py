"""A service with a cluster-wide timer whose ticks leave a trace on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rpc import rpc, timer
from tests.integration.stop_services import LEDGER_DIR

#: Seconds between ticks of :class:`Ticking`.
INTERVAL = 0.2


class Ticking:
    name = "ticking"

    @timer(INTERVAL)
    def tick(self) -> None:
        """Writes "<pid> start <time>" and "<pid> end <time>" around a short run."""
        ledger = Path(os.environ[LEDGER_DIR]) / "ticks.log"
        with ledger.open("a") as file:
            file.write(f"{os.getpid()} start {time.time()}\n")
        time.sleep(INTERVAL / 4)
        with ledger.open("a") as file:
            file.write(f"{os.getpid()} end {time.time()}\n")

    @rpc
    def ping(self) -> int:
        return os.getpid()
