"""The gateway's share: an HTTP SERVER span per request, and HTTP metrics.

The span is the trace's root, or continues the ``traceparent`` the HTTP client
sent; the call the request makes runs inside it, so its CLIENT span is a child.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from rpc.config import Config


def _route(request: web.Request) -> str:
    """The route's pattern (``/{service}/{method}``): a label of few values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def tracing_middleware() -> Middleware:
    """An aiohttp middleware that serves each request inside an HTTP SERVER span."""
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    import rpc

    tracer = trace.get_tracer("rpc.gateway", rpc.__version__)

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            parent = propagate.extract(request.headers)
        except Exception:
            parent = otel_context.Context()  # a malformed traceparent: a new trace
        route = _route(request)
        span = tracer.start_span(
            f"{request.method} {route}", context=parent, kind=SpanKind.SERVER
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "http.request.method": request.method,
                    "http.route": route,
                    "url.path": request.path,
                    "url.scheme": request.scheme,
                }
            )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            response = await handler(request)
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        else:
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_attribute("error.type", str(response.status))
                span.set_status(Status(StatusCode.ERROR))
            return response
        finally:
            span.end()
            otel_context.detach(token)

    return traced


_HTTP_METRICS: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = (
    weakref.WeakKeyDictionary()
)


def _http_metrics(registry: Any) -> tuple[Any, Any]:
    """The gateway's two families in ``registry``, made once per registry."""
    from prometheus_client import Counter, Histogram

    from rpc.observability.metrics import DURATION_BUCKETS

    if registry in _HTTP_METRICS:
        return _HTTP_METRICS[registry]
    requests = Counter(
        "rpc_gateway_requests",
        "HTTP requests the gateway answered, by route and status.",
        ("route", "status"),
        registry=registry,
    )
    duration = Histogram(
        "rpc_gateway_request_duration_seconds",
        "Time from a request's arrival to its response.",
        ("route",),
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    _HTTP_METRICS[registry] = (requests, duration)
    return requests, duration


def metrics_middleware(registry: Any) -> Middleware:
    """An aiohttp middleware counting requests by route and status, and timing them."""
    requests, duration = _http_metrics(registry)

    @web.middleware
    async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = _route(request)
            requests.labels(route, str(status)).inc()
            duration.labels(route).observe(time.perf_counter() - started)

    return measured


def gateway_middlewares(config: Config, registry: Any | None) -> list[Middleware]:
    """The aiohttp middlewares ``config`` turns on, outermost first."""
    found: list[Middleware] = []
    if registry is not None:
        found.append(metrics_middleware(registry))
    if config.tracing:
        found.append(tracing_middleware())
    return found
