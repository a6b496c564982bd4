"""A greeter, and a frontend that calls it: the smallest service-to-service example."""

from __future__ import annotations

from rpc import RpcProxy, rpc


class Greeter:
    name = "greeter"

    @rpc
    def hello(self, name: str) -> str:
        """Greet someone by name."""
        return f"Hello, {name}!"


class Frontend:
    name = "frontend"
    greeter = RpcProxy("greeter")  # the caller never knows where greeter runs

    @rpc
    def welcome(self, user: str) -> str:
        """Greet a user loudly, through the greeter service."""
        return str(self.greeter.hello(user)).upper()
