"""The HTTP gateway: REST outside, AMQP RPC inside, on the asyncio client.

``POST /<service>/<method>`` with a JSON body (an object for keyword arguments, a list
for positional ones) calls the method and answers its JSON result. ``GET /services``
(and ``GET /``) lists what the running workers serve; ``GET /health`` says whether
the broker is reachable. The gateway keeps no state of its own, so any number of them
can run behind a load balancer. Its connections (timeouts, a cap, errors before
routing) are :mod:`rpc.gateway_server`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypedDict
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web

from rpc import gateway_access, protocol, serialization
from rpc.async_proxy import AsyncClusterProxy
from rpc.config import Config
from rpc.discovery import DISCOVERY_QUIET, DISCOVERY_WAIT
from rpc.errors import (
    BrokerError,
    CallTimeoutError,
    InvalidArgumentsError,
    MalformedRequestError,
    MethodNotFoundError,
    PayloadTooLargeError,
    RemoteError,
    SerializationError,
    UnknownServiceError,
)
from rpc.gateway_access import ACCESS, GatewayAccess
from rpc.gateway_server import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    LIMITS,
    ConnectionLimits,
    content_encoding_accepted,
    json_error,
    request_phase,
    serving,
    unsupported_encoding,
)
from rpc.logs import status
from rpc.observability import default_registry
from rpc.observability.gateway import gateway_middlewares
from rpc.serialization import JsonValue

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

#: Request header that sets one call's timeout in seconds; the query parameter
#: ``?timeout=`` does the same, and the header wins when both are given.
TIMEOUT_HEADER = "X-Rpc-Timeout"
TIMEOUT_QUERY = "timeout"
#: Largest request body accepted, in bytes, unless ``--max-body`` says otherwise.
DEFAULT_MAX_BODY = 1024 * 1024
#: Longest timeout a request may ask for, in seconds.
MAX_TIMEOUT = 300.0
#: Seconds a client is told to wait (``Retry-After``) while the broker is away.
RETRY_AFTER = 1
#: Below this many opening brackets, a body cannot nest deeper than the JSON encoder
#: goes (orjson: 254 levels, the request envelope included), so it is not checked.
_SHALLOW_BRACKETS = 200


@dataclasses.dataclass
class _State:
    """What one gateway process keeps: its limits and its connection attempt."""

    max_body: int
    max_timeout: float
    discovery_wait: float
    discovery_quiet: float
    connecting: asyncio.Future[None] | None = None


CLUSTER: Final = web.AppKey("cluster", AsyncClusterProxy)
STATE: Final = web.AppKey("state", _State)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the pure parts: request parsing and error mapping -------------------------------


def parse_call_body(body: bytes) -> tuple[list[JsonValue], dict[str, JsonValue]]:
    """Positional and keyword arguments from a request body.

    An empty body (or ``null``) means no arguments, a JSON object holds keyword
    arguments and a JSON list positional ones. Anything else raises
    SerializationError.
    """
    if not body.strip():
        return [], {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"request body is not valid JSON: {exc}") from exc
    if value is None:
        return [], {}
    if isinstance(value, dict):
        args, kwargs = [], value
    elif isinstance(value, list):
        args, kwargs = value, {}
    else:
        raise SerializationError(
            "request body must be a JSON object (keyword arguments) "
            "or a JSON list (positional arguments)"
        )
    if body.count(b"[") + body.count(b"{") >= _SHALLOW_BRACKETS:
        # Parsing goes deeper than encoding: a body nested too deep would only
        # fail once sent, and look like the gateway's fault. Encode it as the call
        # will, to refuse it here.
        try:
            serialization.encode(protocol.request_body(args, kwargs))
        except SerializationError as exc:
            raise SerializationError(
                f"the arguments cannot be sent (nested too deep?): {exc}"
            ) from exc
    return args, kwargs


def parse_timeout(
    header: str | None, query: str | None, *, limit: float = MAX_TIMEOUT
) -> float | None:
    """The timeout a request asks for, in seconds, or None for the default.

    Raises ValueError for anything but a positive number up to ``limit``.
    """
    raw = header if header is not None else query
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"timeout must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > limit:
        raise ValueError(f"timeout must be above 0 and at most {limit:g} seconds")
    return seconds


def error_response(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for what a call raised.

    A failure of the remote handler is a 502 (the gateway works, what is behind it
    failed); remote tracebacks stay inside: they are for the service's own logs.
    """
    status: int
    if isinstance(exc, (UnknownServiceError, MethodNotFoundError)):
        status = 404
    elif isinstance(exc, InvalidArgumentsError):
        status = 422
    elif isinstance(exc, MalformedRequestError):
        status = 400
    elif isinstance(exc, CallTimeoutError):
        status = 504
    elif isinstance(exc, BrokerError):
        status = 503
    elif isinstance(exc, PayloadTooLargeError):
        status = 413
    elif isinstance(exc, (RemoteError, SerializationError)):
        status = 502
    else:
        status = 500
    if isinstance(exc, RemoteError):
        error: dict[str, Any] = {"type": exc.exc_type, "message": exc.message}
        if exc.service:
            error["service"] = exc.service
    elif status == 500:
        error = {"type": "InternalError", "message": "the gateway failed; see its log"}
    else:
        error = {"type": type(exc).__name__, "message": str(exc)}
    return status, {"error": error}


def _error(status: int, exc_type: str, message: str) -> web.Response:
    return json_error(status, exc_type, message)


def _json(status: int, value: JsonValue) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(value), content_type="application/json"
    )


# -- the application ---------------------------------------------------------------


def create_app(
    config: Config | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_timeout: float = MAX_TIMEOUT,
    discovery_wait: float = DISCOVERY_WAIT,
    discovery_quiet: float = DISCOVERY_QUIET,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    metrics_registry: Any | None = None,
    access: GatewayAccess | None = None,
) -> web.Application:
    """The gateway as an aiohttp application, for :func:`serve` or any runner.

    ``access`` says who may call what (:class:`~rpc.gateway_access.GatewayAccess`):
    by default nobody, so that a gateway is never open by mistake; give it tokens,
    or ``allow_anonymous=True``.

    ``GET /services`` collects the workers' answers until ``discovery_quiet``
    seconds pass without a new one (see :meth:`AsyncClusterProxy.discover`), and
    for ``discovery_wait`` seconds at most. The connection limits (``header_timeout``,
    ``idle_timeout``, ``max_connections``) hold when the app is served by
    :func:`serve` or :func:`rpc.gateway_server.serving`; another runner serves it
    with aiohttp's own.

    With ``tracing`` configured each request is an HTTP SERVER span; with
    ``metrics_registry`` (a prometheus-client registry; the global one when
    ``metrics_port`` is set) requests and calls are counted there.
    """
    config = config if config is not None else Config.load()
    if metrics_registry is None and config.metrics_port:
        metrics_registry = default_registry()
    app = web.Application(
        client_max_size=max_body,
        middlewares=[
            *gateway_middlewares(config, metrics_registry),
            _json_errors,
            request_phase,
            gateway_access.cors,
            gateway_access.authenticate,
        ],
    )
    gateway_access.install(app, access if access is not None else GatewayAccess())
    app[CLUSTER] = AsyncClusterProxy(
        config=config,
        name="gateway",
        metrics_registry=metrics_registry,
        middleware=[gateway_access.ForwardIdentity()],
        user_id=_broker_user(config),
    )
    app[STATE] = _State(max_body, max_timeout, discovery_wait, discovery_quiet)
    app[LIMITS] = ConnectionLimits(header_timeout, idle_timeout, max_connections)
    app.cleanup_ctx.append(_cluster_lifecycle)
    app.router.add_get("/", _services)
    app.router.add_get("/services", _services)
    app.router.add_get("/health", _health)
    app.router.add_post("/{service}/{method}", _call)
    return app


class _AppOptions(TypedDict, total=False):
    """The keyword options of :func:`create_app`, which :func:`serve` passes on."""

    max_body: int
    max_timeout: float
    discovery_wait: float
    discovery_quiet: float
    header_timeout: float
    idle_timeout: float
    max_connections: int
    access: GatewayAccess


def _broker_user(config: Config) -> str | None:
    """The broker user the gateway logs in as, stamped on its requests as
    ``user_id`` so that workers may trust the caller identity it passes on."""
    if config.login_method == "EXTERNAL":
        return None  # the certificate's name: not known here
    username = urlsplit(config.broker_url.split(";")[0]).username
    return unquote(username) if username else None


def serve(
    config: Config,
    *,
    host: str,
    port: int,
    on_listening: Callable[[str, int], None] | None = None,
    **options: Unpack[_AppOptions],
) -> None:
    """Run the gateway until SIGINT or SIGTERM; ``options`` are create_app's.

    ``on_listening(host, port)`` runs once connections are served. A port that is
    taken or a host that is not this machine's raises OSError before anything else.
    With ``metrics_port``, ``/metrics`` is served on that port as well.
    """
    app = create_app(config, **options)
    stop_metrics = None
    if config.metrics_port:
        from rpc.observability.exporter import serve_registry

        stop_metrics = serve_registry(config, default_registry())
    try:
        asyncio.run(
            _serve_until_signalled(app, host=host, port=port, ready=on_listening)
        )
    finally:
        if stop_metrics is not None:
            stop_metrics()


async def _serve_until_signalled(
    app: web.Application,
    *,
    host: str,
    port: int,
    ready: Callable[[str, int], None] | None = None,
) -> None:
    stopping = asyncio.Event()
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        stopping.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    async with serving(app, host=host, port=port) as address:
        if ready is not None:
            ready(*address)
        await stopping.wait()
        name = received[0].name if received else "asked to stop"
        status.info("%s: the gateway stops", name)
    status.info("gateway stopped")


async def _cluster_lifecycle(app: web.Application) -> AsyncIterator[None]:
    cluster = app[CLUSTER]
    try:
        await cluster.start()
    except BrokerError as exc:
        # Serve anyway: /health says 503 and calls fail fast until the broker is back.
        log.warning("gateway started without a broker: %s", exc)
    yield
    task = app[STATE].connecting
    if task is not None:
        task.cancel()
    await cluster.stop()


def _connect_in_background(app: web.Application) -> None:
    """Try to (re)connect a proxy that never got its connection, once at a time."""
    state = app[STATE]
    if state.connecting is None or state.connecting.done():
        state.connecting = asyncio.ensure_future(_try_start(app[CLUSTER]))


async def _try_start(cluster: AsyncClusterProxy) -> None:
    try:
        await cluster.start()
    except BrokerError as exc:
        log.warning("broker still unreachable: %s", exc)


def _unavailable(app: web.Application) -> web.Response | None:
    """The 503 to answer while the broker connection is down, else None.

    A call made then would wait for the reconnection (idempotent ones up to their
    deadline): an HTTP client is better told at once, and may retry.
    """
    cluster = app[CLUSTER]
    if cluster.connected:
        return None
    if not cluster.started:
        # Once started, the connection reconnects by itself; before that, nobody
        # would.
        _connect_in_background(app)
    response = _error(503, "BrokerError", "the broker is not reachable")
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error the gateway answers is JSON, aiohttp's own (404, 405, 413) too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, type(exc).__name__, exc.reason)
    except Exception:
        log.exception("%s %s failed in the gateway", request.method, request.path)
        return _error(500, "InternalError", "the gateway failed; see its log")


async def _call(request: web.Request) -> web.Response:
    service = request.match_info["service"]
    method = request.match_info["method"]
    try:
        protocol.check_service_name(service)
        protocol.check_method_name(method)
        # Checked here, before the call: a key AMQP cannot carry fails in the
        # middle of the publish, which is no answer for the client.
        protocol.check_routing_key(service, method)
    except ValueError as exc:
        return _error(404, "UnknownServiceError", str(exc))
    state = request.app[STATE]
    try:
        timeout = parse_timeout(
            request.headers.get(TIMEOUT_HEADER),
            request.query.get(TIMEOUT_QUERY),
            limit=state.max_timeout,
        )
    except ValueError as exc:
        return _error(400, "InvalidTimeout", str(exc))
    if not content_encoding_accepted(request.headers.getall("Content-Encoding", [])):
        return unsupported_encoding()
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(
            413,
            "PayloadTooLargeError",
            f"request body is over the limit of {state.max_body} bytes",
        )
    except web.RequestPayloadError:
        # A body that cannot be taken apart: a broken chunked encoding, or a
        # Content-Encoding it does not have.
        response = _error(
            400,
            "MalformedRequestError",
            "the request body cannot be read: its transfer or content encoding "
            "is broken",
        )
        # The rest of the body cannot be read either: close the connection rather
        # than have aiohttp try to drain it.
        response.force_close()
        request.content.feed_eof()
        return response
    try:
        args, kwargs = parse_call_body(body)
    except SerializationError as exc:
        return _error(400, "MalformedRequestError", str(exc))
    unavailable = _unavailable(request.app)
    if unavailable is not None:
        return unavailable
    try:
        result = await request.app[CLUSTER].call(
            service, method, args, kwargs, timeout=timeout
        )
    except Exception as exc:
        status, payload = error_response(exc)
        if status == 500:
            log.exception("call %s.%s failed in the gateway", service, method)
        else:
            log.info("call %s.%s: %s %s", service, method, status, exc)
        return _json(status, payload)
    return _json(200, result)


async def _services(request: web.Request) -> web.Response:
    unavailable = _unavailable(request.app)
    if unavailable is not None:
        return unavailable
    cluster = request.app[CLUSTER]
    state = request.app[STATE]
    try:
        listing = await cluster.discover(
            wait=state.discovery_wait, quiet=state.discovery_quiet
        )
    except BrokerError as exc:
        return _error(503, "BrokerError", str(exc))
    token = request.get(gateway_access.TOKEN_KEY)
    return _json(200, {"services": request.app[ACCESS].visible(listing, token)})


async def _health(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    if cluster.connected:
        return _json(200, {"status": "ok", "broker": "connected"})
    _unavailable(request.app)
    return _json(503, {"status": "unavailable", "broker": "disconnected"})
