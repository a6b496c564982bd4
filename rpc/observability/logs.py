"""Structured logs: one JSON object per line, and a warning for each slow call.

``rpc run --log-format json`` (or ``log_format: json``) formats every log line as
an object with ``time``, ``level``, ``logger`` and ``message``; inside a call, or
on a line about one, it adds ``service``, ``method``, ``correlation_id`` and
``trace_id``, and ``duration_ms`` and ``outcome`` where the line says how a call
ended. Only the formatter changes: which lines are logged is left to the loggers.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Any

import orjson

from rpc.context import current_call
from rpc.middleware import Middleware, Outcome, ServerCall

log = logging.getLogger(__name__)

#: Fields a log line about a call may carry, read from the record (``extra=``).
CALL_FIELDS = (
    "service",
    "method",
    "correlation_id",
    "trace_id",
    "duration_ms",
    "outcome",
)

SLOW_CALL = "%s.%s took %.1f ms, over slow_call_seconds (%g s)"

_STARTED = "rpc_logs_started"


def _trace_id() -> str | None:
    # Only when OpenTelemetry is loaded already: a JSON line never imports it.
    if "opentelemetry.trace" not in sys.modules:
        return None
    from rpc.observability.tracing import current_trace_id

    return current_trace_id()


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (the ``json`` log format)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(
                record.created, datetime.timezone.utc
            ).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = current_call()
        if context is not None:
            entry["service"] = context.service
            entry["method"] = context.request.method
            entry["correlation_id"] = context.request.correlation_id
            trace_id = _trace_id()
            if trace_id is not None:
                entry["trace_id"] = trace_id
        for field in CALL_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Format every handler of ``logger`` (the root logger) as JSON lines."""
    target = logging.getLogger() if logger is None else logger
    formatter = JsonFormatter()
    for handler in target.handlers:
        handler.setFormatter(formatter)


def configure_log_format(log_format: str) -> None:
    """Apply ``log_format``: "json" switches the formatter, "text" keeps it."""
    if log_format == "json":
        use_json_logs()


class SlowCallLog(Middleware):
    """Logs a WARNING for each handler run longer than ``seconds``.

    The line carries ``duration_ms`` and ``outcome``; the call's own fields come
    from its context, which is current while this hook runs.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def before_handler(self, call: ServerCall) -> Outcome | None:
        call.state[_STARTED] = time.perf_counter()
        return None

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        started = call.state.get(_STARTED)
        if started is None:
            return
        elapsed = time.perf_counter() - started
        if elapsed < self.seconds:
            return
        duration_ms = round(elapsed * 1000, 3)
        log.warning(
            SLOW_CALL,
            call.service,
            call.method,
            duration_ms,
            self.seconds,
            extra={
                "duration_ms": duration_ms,
                "outcome": "ok" if outcome.error is None else "error",
            },
        )
