"""Points in the lower-left quadrant are inside the circle: no need to look."""

from __future__ import annotations

from rpc import RpcProxy, event_handler, rpc


class AlwaysYes:
    name = "always_yes"
    tally = RpcProxy("tally")

    @event_handler("bitsource", "0.0")
    def inside(self, bits: str) -> None:
        """Both coordinates start with a 0 bit: below half the radius, so inside."""
        self.tally.record.cast("Y")

    @rpc
    def ping(self) -> str:
        """Health check: answers once this worker's subscription is in place."""
        return "pong"
