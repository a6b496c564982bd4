"""A service for graceful-stop tests: its casts leave a durable trace on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rpc import rpc

#: Directory each worker process appends the tokens of the casts it ran to.
LEDGER_DIR = "RPC_TEST_LEDGER_DIR"


class Steady:
    name = "steady"

    @rpc(idempotent=True)
    def work(self, token: str, seconds: float = 0.0) -> str:
        time.sleep(seconds)
        return token

    @rpc
    def record(self, token: str, seconds: float = 0.0) -> None:
        """A cast: its token is on disk once it has run."""
        time.sleep(seconds)
        ledger = Path(os.environ[LEDGER_DIR]) / f"{os.getpid()}.log"
        with ledger.open("a") as file:
            file.write(f"{token}\n")


def recorded(directory: Path) -> set[str]:
    """Every token any worker process wrote to ``directory``."""
    tokens: set[str] = set()
    for ledger in directory.glob("*.log"):
        tokens.update(line for line in ledger.read_text().splitlines() if line)
    return tokens
