"""One OpenTelemetry SDK tracer provider for the whole test run, with an in-memory
exporter: the API lets a process set its global provider only once."""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

_exporter: InMemorySpanExporter | None = None


def span_exporter() -> InMemorySpanExporter:
    """The exporter of the global provider, set up on first use and emptied."""
    global _exporter
    if _exporter is None:
        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    return _exporter


def wait_for_spans(
    exporter: InMemorySpanExporter, count: int, timeout: float = 10
) -> list[ReadableSpan]:
    """The finished spans, once there are ``count`` of them (they end on threads)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = list(exporter.get_finished_spans())
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)
