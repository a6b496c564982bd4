"""One broker connection shared by threads: the facade, and the Delivery it hands out.

The rest of rpc sees :class:`BrokerConnection` and :class:`Delivery` only; the
modules of this package (link, reading, dispatching, confirms, drivers, and
``_pyamqp``, the one that touches py-amqp's internals) are its own.
"""

from __future__ import annotations

from rpc.transport.connection import BrokerConnection, QueueRefusedError
from rpc.transport.delivery import Delivery, DeliveryCallback
from rpc.transport.drivers import reset_memory_broker

__all__ = [
    "BrokerConnection",
    "Delivery",
    "DeliveryCallback",
    "QueueRefusedError",
    "reset_memory_broker",
]
