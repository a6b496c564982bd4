"""The service the benchmarks call: a no-op and an echo, written as a user would."""

from __future__ import annotations

from rpc import rpc


class Bench:
    name = "bench"

    @rpc
    def noop(self) -> None:
        """Do nothing: what is left is the cost of the call itself."""

    @rpc
    def echo(self, data: str) -> str:
        """Send the payload back, for round trips with large bodies."""
        return data
