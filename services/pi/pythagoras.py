"""Sums of squares, as a request-reply service."""

from __future__ import annotations

from rpc import rpc


class Pythagoras:
    name = "pythagoras"

    @rpc(idempotent=True)
    def sum_of_squares(self, numbers: list[int]) -> int:
        """The sum of the squares of ``numbers``."""
        if not all(isinstance(n, int) for n in numbers):
            raise TypeError("numbers must be integers")
        return sum(n * n for n in numbers)
