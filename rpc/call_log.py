"""One INFO line per handler run, for ``rpc run -v``: which, how it went, how long.

It is a middleware, so a daemon that is not asked for it (``rpc run`` without
``-v``, or any runner in code) has nothing on its call path. Add it by import
path like any other: ``middleware: [rpc.call_log:CallLog]``.
"""

from __future__ import annotations

import logging
import time

from rpc.middleware import Middleware, Outcome, ServerCall

#: Its import path, as ``Config.middleware`` takes it.
CALL_LOG_PATH = "rpc.call_log:CallLog"

log = logging.getLogger("rpc.calls")

CALL_LINE = "%s.%s %s in %.1f ms (%s, correlation id %s)"


class CallLog(Middleware):
    """Log every handler run at INFO: service.method, outcome, ms, correlation id.

    The outcome is ``ok``, or the type of the exception the handler (or a
    middleware) raised. A cast, an event or a timer tick has no correlation id:
    ``-`` stands for it.
    """

    def before_handler(self, call: ServerCall) -> None:
        call.state["call_log.started"] = time.perf_counter()

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        started = call.state.get("call_log.started")
        took = 0.0 if started is None else (time.perf_counter() - started) * 1000
        status = "ok" if outcome.error is None else type(outcome.error).__name__
        log.info(
            CALL_LINE,
            call.service,
            call.method,
            status,
            took,
            call.kind,
            call.context.request.correlation_id or "-",
        )
