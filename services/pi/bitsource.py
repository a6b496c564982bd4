"""The bit source: publishes random points as bit strings, typed by their first bits."""

from __future__ import annotations

import random

from rpc import EventDispatcher, rpc
from services.pi import BITS

MAX_BATCH = 10_000


def random_bits(rng: random.Random, count: int) -> str:
    """``count`` random binary digits, leading zeros kept."""
    return format(rng.getrandbits(count), f"0{count}b")


class BitSource:
    name = "bitsource"
    dispatch = EventDispatcher()

    @rpc
    def produce(self, count: int) -> int:
        """Publish ``count`` random points; return how many were published.

        Each is 2*BITS bits, x in the even positions and y in the odd ones, and its
        event type is its first two bits as two words ("0.1"), to filter on.
        """
        if not 0 <= count <= MAX_BATCH:
            raise ValueError(f"count must be between 0 and {MAX_BATCH}")
        rng = random.SystemRandom()
        for _ in range(count):
            bits = random_bits(rng, BITS * 2)
            self.dispatch(f"{bits[0]}.{bits[1]}", bits)
        return count
