"""A service that says who the gateway vouched its caller is."""

from __future__ import annotations

from rpc import current_call, rpc


class Whoami:
    name = "whoami"

    @rpc
    def me(self) -> str | None:
        call = current_call()
        return call.caller_identity if call is not None else None
