"""The judge: decides the points the always-yes subscriber cannot, with pythagoras."""

from __future__ import annotations

from rpc import RpcProxy, event_handler, rpc
from services.pi import UNIT


class Judge:
    name = "judge"
    pythagoras = RpcProxy("pythagoras")
    tally = RpcProxy("tally")

    @event_handler("bitsource", ["0.1", "1.*"])
    def judge(self, bits: str) -> None:
        """Split the bits into x and y, ask for x*x + y*y, and cast the verdict."""
        x, y = int(bits[::2], 2), int(bits[1::2], 2)
        sum_of_squares = self.pythagoras.sum_of_squares([x, y])
        self.tally.record.cast("Y" if sum_of_squares < UNIT else "N")

    @rpc
    def ping(self) -> str:
        """Health check: answers once this worker's subscription is in place."""
        return "pong"
