"""A service for the cluster fault tests: what ran is written to a file, so it
outlives the worker that ran it and the test can read it back.

The directory comes from ``JOURNAL_DIR`` in the daemon's environment. Each line is
one run; appends of one short line from several processes do not interleave.
"""

from __future__ import annotations

import os
from pathlib import Path

from rpc import event_handler, rpc

JOURNAL_ENV = "JOURNAL_DIR"


def journal(name: str) -> Path:
    return Path(os.environ[JOURNAL_ENV]) / name


def _append(name: str, token: str) -> None:
    with journal(name).open("a") as file:
        file.write(f"{token}\n")


def entries(directory: Path, name: str) -> list[str]:
    """The lines of one journal, in the order they were written."""
    path = directory / name
    if not path.exists():
        return []
    return path.read_text().split()


class Journal:
    name = "journal"

    @rpc
    def record(self, token: str) -> str:
        """For casts: every run appends its token to ``casts``."""
        _append("casts", token)
        return token

    @rpc(idempotent=True)
    def read(self, token: str) -> str:
        """For idempotent calls: answered again after a lost connection."""
        _append("reads", token)
        return token

    @rpc
    def write(self, token: str) -> str:
        """For calls that must not be retried behind the caller's back."""
        _append("writes", token)
        return token

    @rpc
    def flaky(self, token: str) -> str:
        """For casts: the first run of each token raises, the next one records it,
        so every token waits once in a retry queue."""
        if token not in entries(Path(os.environ[JOURNAL_ENV]), "attempts"):
            _append("attempts", token)
            raise RuntimeError(f"first run of {token} fails on purpose")
        _append("casts", token)
        return token

    @event_handler("journal", "noted")
    def on_noted(self, payload: dict[str, str]) -> None:
        _append("events", payload["token"])
