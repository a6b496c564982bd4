"""CPU-bound work: the sum of a million random integers, as in the GIL experiment.

Threads cannot speed this up (the GIL serialises them); processes can. Run it with
several worker processes to see calls spread over the cores.
"""

from __future__ import annotations

import random

from rpc import rpc

DEFAULT_COUNT = 1_000_000
MAX_COUNT = 50_000_000


class Compute:
    name = "compute"

    @rpc(idempotent=True)
    def compute(self, count: int = DEFAULT_COUNT, seed: int | None = None) -> int:
        """Sum ``count`` random integers between 1 and 100."""
        if not 0 <= count <= MAX_COUNT:
            raise ValueError(f"count must be between 0 and {MAX_COUNT}")
        rng = random.Random(seed)
        return sum(rng.randint(1, 100) for _ in range(count))

    @rpc(idempotent=True)
    def ping(self) -> str:
        """Answer at once: a no-op for latency measurements."""
        return "pong"
