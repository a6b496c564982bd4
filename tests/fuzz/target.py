"""The service the fuzzer aims at: a method to call, one to cast to, events."""

from __future__ import annotations

from rpc import event_handler, rpc


class Fuzzed:
    name = "fuzz"

    @rpc(idempotent=True)
    def echo(self, value=None):
        """What a health check calls: the worker still answers."""
        return value

    @rpc
    def sink(self, *args, **kwargs):
        """Takes any arguments and does nothing: casts end here."""
        return None

    @event_handler("fuzzsrc", "#")
    def on_anything(self, payload):
        return None
