"""The tally: counts verdicts and reports the estimate of pi.

Counts live in the worker process. Several tally workers share the verdicts, and
each converges on pi separately from its own share, as several ZeroMQ PULL
sockets would.
"""

from __future__ import annotations

import threading

from rpc import rpc

_lock = threading.Lock()
_counts = {"inside": 0, "total": 0}


class Tally:
    name = "tally"

    @rpc
    def record(self, decision: str) -> None:
        """Count one verdict: "Y" inside the quarter circle, "N" outside."""
        if decision not in ("Y", "N"):
            raise ValueError(f"a verdict is 'Y' or 'N', not {decision!r}")
        with _lock:
            _counts["total"] += 1
            _counts["inside"] += decision == "Y"

    @rpc
    def estimate(self) -> dict[str, float | int | None]:
        """Points seen, points inside, and pi estimated as 4 * inside / total."""
        with _lock:
            inside, total = _counts["inside"], _counts["total"]
        return {
            "inside": inside,
            "total": total,
            "pi": 4 * inside / total if total else None,
        }
