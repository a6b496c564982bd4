"""A service for fault tests: it counts how often each call ran, in this process."""

from __future__ import annotations

import collections
import threading
import time
from typing import ClassVar

from rpc import current_call, rpc


class Ledger:
    """Every method records its ``token``, so a test can tell what really ran."""

    name = "ledger"
    runs: ClassVar[collections.Counter[str]] = collections.Counter()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def count(cls, token: str) -> int:
        with cls._lock:
            return cls.runs[token]

    @classmethod
    def _record(cls, token: str) -> None:
        with cls._lock:
            cls.runs[token] += 1

    @rpc
    def record(self, token: str, seconds: float = 0.0) -> str:
        """Not idempotent: a caller must not retry it behind our back."""
        self._record(token)
        time.sleep(seconds)
        return token

    @rpc(idempotent=True)
    def lookup(self, token: str, seconds: float = 0.0) -> dict[str, object]:
        """Idempotent: says whether this run was a retry (or a redelivery)."""
        self._record(token)
        time.sleep(seconds)
        call = current_call()
        return {"token": token, "redelivered": call is not None and call.redelivered}

    @rpc
    def remaining(self, token: str = "") -> float | None:
        """The caller's time left as this handler starts."""
        if token:
            self._record(token)
        call = current_call()
        return None if call is None else call.remaining()
