"""One worker process serving services: :class:`ServiceRunner` and its parts.

``runner`` is the facade; ``topology`` what a worker declares on connect;
``consumers`` one consumer per entrypoint kind, with their registry; ``admission``
what a request must pass to run; ``dispatch`` onto the handler threads
(``handler_pool``) or the event loop; ``invoke`` the handler with its dependencies
and middleware; ``replies`` and ``failures`` how each delivery is settled;
``retry_queues`` the retry queues declared lately.
"""

from __future__ import annotations

from rpc.worker.invoke import HandlerObserver
from rpc.worker.runner import ServiceRunner

__all__ = ["HandlerObserver", "ServiceRunner"]
