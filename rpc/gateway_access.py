"""Who may use the gateway, and for what: API tokens, scopes, exposure, CORS, limits.

Tokens come from a tokens file (``--tokens-file``, YAML or JSON) or the
``RPC_GATEWAY_TOKENS`` environment variable holding the same document, never from
the command line. Each has a name, its SHA-256 (or the token itself, hashed on
load), the ``service.method`` patterns it may call, and optionally its own limits.
A request presents its token as ``Authorization: Bearer <token>`` or
``X-Api-Key: <token>``; the token is hashed and compared, in constant time, with
every known one. The token's name is what is logged and passed on to services;
the token itself never leaves this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from aiohttp import web

from rpc import protocol
from rpc.errors import ConfigError
from rpc.gateway_limits import CallerLimits, RateLimit, retry_after
from rpc.gateway_server import json_error
from rpc.middleware import ClientCall, Middleware

log = logging.getLogger("rpc.gateway")

TOKENS_ENV = "RPC_GATEWAY_TOKENS"
TOKENS_FILE_ENV = "RPC_GATEWAY_TOKENS_FILE"
API_KEY_HEADER = "X-Api-Key"
#: The name limits and logs give a request without a token (``--allow-anonymous``).
ANONYMOUS = "anonymous"
#: Paths served to anyone: a load balancer's health check carries no token.
OPEN_PATHS = frozenset({"/health"})
_CORS_HEADERS = (
    "Authorization, Content-Type, Content-Encoding, X-Api-Key, X-Rpc-Timeout"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def scope_matches(pattern: str, service: str, method: str) -> bool:
    """Whether ``pattern`` (``svc.method``, ``svc.*``, ``*.method`` or ``*``) covers
    ``service.method``."""
    if pattern == "*":
        return True
    want_service, _, want_method = pattern.partition(".")
    return want_service in ("*", service) and want_method in ("*", method)


def check_scope(pattern: str) -> str:
    """Return ``pattern`` if it is a scope, else raise ValueError."""
    if pattern == "*":
        return pattern
    service, dot, method = pattern.partition(".")
    try:
        if not dot:
            raise ValueError
        if service != "*":
            protocol.check_service_name(service)
        if method != "*":
            protocol.check_method_name(method)
    except ValueError:
        raise ValueError(
            f"scope {pattern!r} is not SERVICE.METHOD, SERVICE.*, *.METHOD or *"
        ) from None
    return pattern


@dataclasses.dataclass(frozen=True)
class Token:
    """One API token: its name, the SHA-256 of its secret, and what it may do."""

    name: str
    digest: bytes = dataclasses.field(repr=False)
    scopes: tuple[str, ...]
    rate: RateLimit | None = None
    max_concurrent: int | None = None

    def allows(self, service: str, method: str) -> bool:
        return any(scope_matches(scope, service, method) for scope in self.scopes)


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenRegistry:
    """The known tokens; :meth:`identify` finds whose a presented secret is."""

    def __init__(self, tokens: Sequence[Token] = ()) -> None:
        names = [token.name for token in tokens]
        if len(set(names)) != len(names):
            raise ConfigError("two gateway tokens have the same name")
        digests = [token.digest for token in tokens]
        if len(set(digests)) != len(digests):
            raise ConfigError("two gateway tokens have the same secret")
        self.tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def identify(self, secret: str) -> Token | None:
        """The token whose secret this is, or None.

        Every known digest is compared, with :func:`hmac.compare_digest`, whatever
        matched before: how long it takes says nothing of which token, or how much
        of one, matched.
        """
        presented = digest_of(secret)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.digest, presented):
                found = token
        return found


def parse_tokens(document: object, *, source: str) -> TokenRegistry:
    """Tokens from a parsed tokens document: a list of entries, or ``{tokens: [...]}``.

    An entry has ``name``, ``sha256`` (hex) or ``token``, ``scopes``, and optionally
    ``rate`` (requests a second), ``burst`` and ``max_concurrent``. Errors name the
    entry, never a secret.
    """
    if isinstance(document, dict) and "tokens" in document:
        document = document["tokens"]
    if not isinstance(document, list):
        raise ConfigError(f"{source}: expected a list of tokens")
    tokens = []
    for number, entry in enumerate(document, 1):
        where = f"{source}: token {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping")
        tokens.append(_token(entry, where))
    return TokenRegistry(tokens)


def _token(entry: Mapping[str, Any], where: str) -> Token:
    unknown = set(entry) - {
        "name",
        "sha256",
        "token",
        "scopes",
        "rate",
        "burst",
        "max_concurrent",
    }
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or not name.isprintable():
        raise ConfigError(f"{where}: needs a name")
    where = f"{where} ({name})"
    secret, hexdigest = entry.get("token"), entry.get("sha256")
    if (secret is None) == (hexdigest is None):
        raise ConfigError(f"{where}: give either sha256 or token")
    if secret is not None:
        if not isinstance(secret, str) or len(secret) < 16:
            raise ConfigError(
                f"{where}: a token must be a string of 16 or more characters"
            )
        digest = digest_of(secret)
    else:
        try:
            digest = bytes.fromhex(str(hexdigest))
        except ValueError:
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise ConfigError(f"{where}: sha256 must be 64 hexadecimal digits")
    scopes = entry.get("scopes")
    if isinstance(scopes, str):
        scopes = [scopes]
    if not isinstance(scopes, list) or not scopes:
        raise ConfigError(f"{where}: needs scopes, such as ['greeter.*']")
    try:
        checked = tuple(check_scope(str(scope)) for scope in scopes)
        rate = None
        if entry.get("rate") is not None:
            rate = RateLimit(
                float(entry["rate"]), int(entry.get("burst") or max(1, entry["rate"]))
            )
        max_concurrent = entry.get("max_concurrent")
        if max_concurrent is not None and int(max_concurrent) < 1:
            raise ValueError("max_concurrent must be at least 1")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Token(
        name,
        digest,
        checked,
        rate=rate,
        max_concurrent=None if max_concurrent is None else int(max_concurrent),
    )


def load_tokens(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> TokenRegistry:
    """Tokens from ``path``, else the ``RPC_GATEWAY_TOKENS`` document (YAML or JSON),
    else ``RPC_GATEWAY_TOKENS_FILE``; none when nothing is given."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(TOKENS_FILE_ENV) or None
    if path is None and environ.get(TOKENS_ENV):
        return parse_tokens(_yaml(environ[TOKENS_ENV], TOKENS_ENV), source=TOKENS_ENV)
    if path is None:
        return TokenRegistry()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc.strerror}") from exc
    return parse_tokens(_yaml(text, str(path)), source=str(path))


def _yaml(text: str, source: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        # Not the parser's message: it quotes the text, which holds secrets.
        raise ConfigError(f"{source} is not valid YAML or JSON") from None


@dataclasses.dataclass(frozen=True)
class GatewayAccess:
    """The gateway's access policy; the default one refuses every request.

    ``expose`` limits what the gateway serves at all (every method when empty),
    for every caller; ``rate`` and ``max_concurrent`` are each caller's limits
    unless its token has its own; ``cors_origins`` are the browser origins allowed
    to call (none by default).
    """

    tokens: TokenRegistry = dataclasses.field(default_factory=TokenRegistry)
    allow_anonymous: bool = False
    expose: tuple[str, ...] = ()
    rate: RateLimit | None = None
    max_concurrent: int | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in self.expose:
            check_scope(pattern)
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError("max_concurrent must be at least 1")

    @property
    def refuses_everyone(self) -> bool:
        return not self.tokens and not self.allow_anonymous

    def exposed(self, service: str, method: str) -> bool:
        return not self.expose or any(
            scope_matches(pattern, service, method) for pattern in self.expose
        )

    def visible(
        self, listing: Mapping[str, Any], token: Token | None
    ) -> dict[str, Any]:
        """``listing`` (merged discovery) cut down to what ``token`` may call here."""
        shown: dict[str, Any] = {}
        for service, entry in listing.items():
            methods = {
                method: about
                for method, about in entry.get("methods", {}).items()
                if self.exposed(service, method)
                and (token is None or token.allows(service, method))
            }
            if methods:
                shown[service] = {**entry, "methods": methods}
        return shown


ACCESS: Final = web.AppKey("access", GatewayAccess)
LIMITS_STATE: Final = web.AppKey("caller_limits", CallerLimits)
#: The token a request came with (None: anonymous), for the handlers after
#: :func:`authenticate`: a typed key where aiohttp has them (newer releases warn
#: about plain strings).
_REQUEST_KEY: Any = getattr(web, "RequestKey", None)
TOKEN_KEY: Final[Any] = (
    _REQUEST_KEY("rpc.token", object) if _REQUEST_KEY is not None else "rpc.token"
)
#: Who the call being sent is made for: read by :class:`ForwardIdentity`.
_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rpc_gateway_caller", default=None
)


def presented_secret(request: web.Request) -> str | None:
    """The token a request carries, or None; ValueError for a malformed one."""
    header = request.headers.get("Authorization")
    key = request.headers.get(API_KEY_HEADER)
    if header is not None and key is not None:
        raise ValueError(f"send the token once: Authorization or {API_KEY_HEADER}")
    if key is not None:
        return key.strip() or None
    if header is None:
        return None
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ValueError("the Authorization header must be 'Bearer <token>'")
    return secret.strip()


def _unauthorized(message: str) -> web.Response:
    return json_error(
        401, "UnauthorizedError", message, headers={"WWW-Authenticate": "Bearer"}
    )


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer browsers from ``cors_origins``, and only them; off when there are none."""
    origins = request.app[ACCESS].cors_origins
    origin = request.headers.get("Origin")
    if not origins or origin is None or (origin not in origins and "*" not in origins):
        return await handler(request)
    allow = {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
    }
    if request.method == "OPTIONS":  # a preflight: it carries no token
        return web.Response(
            status=204,
            headers={
                **allow,
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": _CORS_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )
    response = await handler(request)
    response.headers.update(allow)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 without a valid token, 403 outside its scopes, 429 over its limits."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    access = request.app[ACCESS]
    if protocol.HEADER_CALLER_IDENTITY in request.headers:
        # The gateway says who the caller is; a client that says it is refused.
        return json_error(
            400,
            "MalformedRequestError",
            f"{protocol.HEADER_CALLER_IDENTITY} is set by the gateway, not by clients",
        )
    try:
        secret = presented_secret(request)
    except ValueError as exc:
        log.info(
            "%s %s from %s: 401 (%s)", request.method, request.path, request.remote, exc
        )
        return _unauthorized(str(exc))
    token = None
    if secret is not None:
        token = access.tokens.identify(secret)
        if token is None:
            log.info(
                "%s %s from %s: 401 (unknown token)",
                request.method,
                request.path,
                request.remote,
            )
            return _unauthorized("the token is not valid")
    elif not access.allow_anonymous:
        log.info(
            "%s %s from %s: 401 (no token)",
            request.method,
            request.path,
            request.remote,
        )
        return _unauthorized(
            f"send a token: 'Authorization: Bearer <token>' or '{API_KEY_HEADER}'"
        )
    name = token.name if token is not None else ANONYMOUS
    service = request.match_info.get("service")
    method = request.match_info.get("method")
    if request.method == "POST" and service is not None and method is not None:
        if not access.exposed(service, method):
            return json_error(
                404, "UnknownServiceError", f"{service}.{method} is not served here"
            )
        if token is not None and not token.allows(service, method):
            log.info("POST %s by %s: 403", request.path, name)
            return json_error(
                403, "ForbiddenError", f"token {name!r} may not call {service}.{method}"
            )
    limits = request.app[LIMITS_STATE]
    refused = limits.admit(
        name,
        rate=token.rate if token is not None and token.rate else access.rate,
        max_concurrent=(
            token.max_concurrent
            if token is not None and token.max_concurrent
            else access.max_concurrent
        ),
        now=time.monotonic(),
    )
    if refused is not None:
        kind, wait = refused
        log.info("%s %s by %s: 429 (%s)", request.method, request.path, name, kind)
        what = "requests a second" if kind == "rate" else "requests at once"
        return json_error(
            429,
            "TooManyRequestsError",
            f"{name!r} is over its limit of {what}",
            headers={"Retry-After": retry_after(wait)},
        )
    request[TOKEN_KEY] = token
    caller = _CALLER.set(token.name if token is not None else None)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        raise
    finally:
        _CALLER.reset(caller)
        limits.release(name)
    log.info("%s %s by %s: %d", request.method, request.path, name, response.status)
    return response


class ForwardIdentity(Middleware):
    """Puts the caller's token name in the calls the gateway sends on its behalf.

    Workers believe it only because the gateway's requests carry its broker user
    as ``user_id`` (which RabbitMQ checks) and they trust that user.
    """

    def before_send(self, call: ClientCall) -> None:
        caller = _CALLER.get()
        if caller is not None:
            call.headers[protocol.HEADER_CALLER_IDENTITY] = caller


def install(app: web.Application, access: GatewayAccess) -> None:
    """Give ``app`` its access policy and the state its limits keep."""
    app[ACCESS] = access
    app[LIMITS_STATE] = CallerLimits()
