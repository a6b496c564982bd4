"""The gateway's HTTP connections: timeouts, a cap, and JSON errors before routing.

aiohttp answers what it cannot parse (a bad request line, an oversized header, a
broken chunked body) in text/plain, before any middleware runs, and keeps a silent
or slow connection open for an hour. The gateway serves its application through
:class:`GatewayConnection` instead, an aiohttp ``RequestHandler`` that answers
those in the gateway's JSON, reads each request's headers within a deadline, closes
idle keep-alive connections, and answers 503 past a number of open connections.
This is the only module that leans on aiohttp's private parts (how its request
handler queues a parser error): see :meth:`GatewayConnection.data_received`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import _ErrInfo  # private: see data_received

log = logging.getLogger(__name__)

#: Seconds a client has to send a request's headers, from its first byte (or from
#: the opening of the connection).
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds a keep-alive connection may wait for its next request.
DEFAULT_IDLE_TIMEOUT = 75.0
#: Connections served at once; past it, a new connection is answered 503.
DEFAULT_MAX_CONNECTIONS = 1000
#: Seconds a connection refused for the cap is kept after its 503 is sent, so that a
#: client still sending its request reads the answer instead of a reset.
REFUSAL_LINGER = 1.0
#: Seconds a client is told to wait (``Retry-After``) when the gateway is full.
BUSY_RETRY_AFTER = 1
#: The longest part of aiohttp's parser message quoted back to the client.
_MESSAGE_LIMIT = 200

#: Content codings of a request body that the gateway decodes (aiohttp does), plus
#: ``identity``; any other gets a 415. ``br`` and ``zstd`` are refused even where
#: aiohttp could decode them, so that the answer does not depend on what is installed.
ACCEPTED_CONTENT_ENCODINGS: Final = frozenset({"identity", "gzip", "deflate"})


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may take to send headers or sit idle, and how many."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if not self.header_timeout > 0 or not self.idle_timeout > 0:
            raise ValueError("header and idle timeouts must be above 0 seconds")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


LIMITS: Final = web.AppKey("connection_limits", ConnectionLimits)


def error_document(exc_type: str, message: str) -> dict[str, Any]:
    """The JSON body of every error the gateway answers."""
    return {"error": {"type": exc_type, "message": message}}


def json_error(
    status: int,
    exc_type: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error response of the documented shape."""
    return web.Response(
        status=status,
        body=orjson.dumps(error_document(exc_type, message)),
        content_type="application/json",
        headers=headers,
    )


def raw_error(
    status: int,
    exc_type: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A whole HTTP/1.1 error response, for a connection with no request object."""
    body = orjson.dumps(error_document(exc_type, message))
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def parser_error(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """Status, error type and message for what aiohttp's parser or runner refused."""
    if status >= 500:
        return status, "InternalError", "the gateway failed; see its log"
    # aiohttp's message quotes the request and points at the fault on more lines:
    # its first line says what broke.
    detail = str(exc.message).strip() if isinstance(exc, HttpProcessingError) else ""
    reason = detail.splitlines()[0].rstrip(":")[:_MESSAGE_LIMIT] if detail else ""
    message = "the request is not valid HTTP"
    return (
        status,
        "MalformedRequestError",
        f"{message}: {reason}" if reason else message,
    )


def unsupported_encoding() -> web.Response:
    """The 415 for a body in a content coding the gateway does not decode."""
    accepted = ", ".join(sorted(ACCEPTED_CONTENT_ENCODINGS))
    response = json_error(
        415,
        "UnsupportedContentEncodingError",
        f"the request body's Content-Encoding must be one of {accepted}",
        headers={"Accept-Encoding": accepted},
    )
    # The body is left unread: the connection is closed rather than drained.
    response.force_close()
    return response


def content_encoding_accepted(values: list[str]) -> bool:
    """Whether the ``Content-Encoding`` header values name one coding we decode.

    No header, or ``identity``, means the body is as sent. A list of codings
    (``gzip, gzip``) is refused: aiohttp decodes one at most.
    """
    if not values:
        return True
    codings = [part.strip().lower() for value in values for part in value.split(",")]
    return len(codings) == 1 and codings[0] in ACCEPTED_CONTENT_ENCODINGS


class _Census:
    """The connections one listener serves now."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refusal = raw_error(
            503,
            "TooManyConnectionsError",
            f"the gateway serves {limits.max_connections} connections at most; "
            "try again",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        )


class GatewayConnection(web.RequestHandler):
    """One client connection: aiohttp's request handler with the gateway's limits.

    A request's headers must be in within ``header_timeout`` of its first byte, or of
    the opening of the connection for the first request; the connection is then
    closed, with a 408 if part of a request came. Between requests, aiohttp's
    keep-alive timeout is the idle timeout.
    """

    def __init__(self, manager: web.Server, *, census: _Census, **kwargs: Any) -> None:
        super().__init__(
            manager, keepalive_timeout=census.limits.idle_timeout, **kwargs
        )
        self._census = census
        self._counted = False
        self._request: web.BaseRequest | None = None
        self._request_begun = False
        self._headers_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        census = self._census
        if census.open >= census.limits.max_connections:
            # Over the cap, the connection is not served at all: another protocol
            # answers it and closes it.
            refusal = _Refusal(census.refusal)
            transport.set_protocol(refusal)
            refusal.connection_made(transport)
            return
        census.open += 1
        self._counted = True
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._headers_in()
        if self._counted:
            self._counted = False
            self._census.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        request = self._request
        if data and request is None:
            if self._headers_deadline is None:
                self._await_headers()
            self._request_begun = True
        super().data_received(data)
        if request is not None and not request.content.is_eof() and self._failed():
            # aiohttp's C parser, failing inside a chunked body that arrives after
            # the headers, queues a 400 for after this request and leaves its body
            # unfinished: the handler would wait for the rest for ever.
            request.content.set_exception(
                web.RequestPayloadError("the chunked body is broken")
            )

    def request_started(self, request: web.BaseRequest) -> None:
        """The application has the request: its headers are all in."""
        self._request = request
        self._headers_in()

    def request_finished(self) -> None:
        """The application answered: what arrives next starts a new request."""
        self._request = None
        self._request_begun = False

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer what aiohttp refused, or what a handler raised, in JSON."""
        self._headers_in()
        if request.writer.output_size > 0:
            # Part of a response is out: nothing can follow it on this connection.
            raise ConnectionError("a response is sent already: cannot answer an error")
        if isinstance(exc, ContentEncodingError):
            # A coding aiohttp knows but cannot decode here (``br`` without
            # Brotli): refused like any other coding the gateway does not accept.
            return unsupported_encoding()
        status, exc_type, text = parser_error(status, exc)
        if status >= 500:
            log.error("request from %s failed", request.remote, exc_info=exc)
        else:
            log.info("refused a request from %s: %s", request.remote, exc)
        response = json_error(status, exc_type, text)
        response.force_close()
        return response

    def _failed(self) -> bool:
        """Whether the parser gave up on this connection: aiohttp queued its error."""
        messages = getattr(self, "_messages", ())
        return any(isinstance(message, _ErrInfo) for message, _ in messages)

    def _await_headers(self) -> None:
        loop = asyncio.get_running_loop()
        self._headers_deadline = loop.call_later(
            self._census.limits.header_timeout, self._headers_late
        )

    def _headers_in(self) -> None:
        if self._headers_deadline is not None:
            self._headers_deadline.cancel()
            self._headers_deadline = None

    def _headers_late(self) -> None:
        self._headers_deadline = None
        transport = self.transport
        if transport is None or self._request is not None:
            return
        if self._request_begun:
            transport.write(
                raw_error(
                    408,
                    "RequestTimeoutError",
                    "the request headers did not arrive within "
                    f"{self._census.limits.header_timeout:g} seconds",
                )
            )
        # A connection that never began a request is closed without a word, as
        # an idle keep-alive connection is.
        self.force_close()


class _Refusal(asyncio.Protocol):
    """A connection over the cap: answered 503, then closed.

    The request is never read. Closing at once, with the request unread, would make
    the kernel reset the connection, and the client could lose the 503: the write
    side is shut first and the connection lingers a moment.
    """

    def __init__(self, response: bytes) -> None:
        self._response = response
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._response)
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(
            REFUSAL_LINGER, transport.close
        )

    def data_received(self, data: bytes) -> None:
        """The request is discarded: it is answered already."""

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._linger is not None:
            self._linger.cancel()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_phase(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell a :class:`GatewayConnection` when a request reaches the application."""
    connection = request.protocol
    if not isinstance(connection, GatewayConnection):
        return await handler(request)
    connection.request_started(request)
    try:
        return await handler(request)
    finally:
        connection.request_finished()


class CannotListenError(OSError):
    """The gateway's address cannot be listened on: taken, or not this machine's."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        if isinstance(cause, socket.gaierror) or not cause.errno:
            reason = str(cause.strerror or cause)
        else:
            reason = os.strerror(cause.errno)
        reason = reason[:1].lower() + reason[1:]
        super().__init__(cause.errno, f"cannot listen on {host}:{port}: {reason}")


@asynccontextmanager
async def serving(
    app: web.Application, *, host: str, port: int
) -> AsyncIterator[tuple[str, int]]:
    """Serve ``app`` on ``host:port`` with its connection limits; yield the address.

    The limits are the app's own (``create_app`` sets them), else the defaults.
    Port 0 picks a free port: the address yielded says which.
    """
    limits = app.get(LIMITS, ConnectionLimits())
    census = _Census(limits)
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(app)
    options: dict[str, Any] = {
        "loop": loop,
        "access_log_class": AccessLog,
        "access_log": access_log,
    }

    def connection() -> GatewayConnection:
        server = runner.server
        assert server is not None  # connections are served only once it is set up
        return GatewayConnection(server, census=census, **options)

    # Bound first, so that a busy port or a bad host fails at once, before the
    # app's start-up (which connects to the broker); served once that is done.
    try:
        listener = await loop.create_server(
            connection, host, port, reuse_address=True, start_serving=False
        )
    except OSError as exc:
        raise CannotListenError(host, port, exc) from exc
    try:
        await runner.setup()
        try:
            await listener.start_serving()
            address = listener.sockets[0].getsockname()
            yield str(address[0]), int(address[1])
        finally:
            listener.close()
    finally:
        listener.close()
        await runner.cleanup()


#: One line per request at INFO (``rpc gateway -v``): client, method, path,
#: status, milliseconds.
access_log = logging.getLogger("rpc.gateway.access")


class AccessLog(AbstractAccessLogger):
    """The gateway's access log; asked once per connection whether it is on, so a
    gateway that does not log requests spends nothing on them."""

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        self.logger.info(
            "%s %s %s %d %.1f ms",
            request.remote or "-",
            request.method,
            request.path_qs,
            response.status,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
