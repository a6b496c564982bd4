"""A shop that publishes order events, and a stock service that subscribes to them."""

from __future__ import annotations

import threading

from rpc import EventDispatcher, event_handler, rpc

_lock = threading.Lock()
_sold: dict[str, int] = {}  # per worker process: a real service would use a database


class Shop:
    name = "shop"
    dispatch = EventDispatcher()

    @rpc
    def order(self, item: str, quantity: int = 1) -> None:
        """Take an order, then tell whoever cares."""
        self.dispatch("orders.created", {"item": item, "quantity": quantity})


class Stock:
    name = "stock"

    @event_handler("shop", "orders.*")  # each order event once, for one worker
    def on_order(self, order: dict[str, int | str]) -> None:
        """Count what was sold."""
        item, quantity = str(order["item"]), int(order["quantity"])
        with _lock:
            _sold[item] = _sold.get(item, 0) + quantity

    @rpc
    def sold(self, item: str) -> int:
        """How many of ``item`` this worker has seen sold."""
        with _lock:
            return _sold.get(item, 0)
