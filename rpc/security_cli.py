"""The security commands of ``rpc``: broker permissions per role, gateway tokens."""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

import click

from rpc import permissions as broker_permissions
from rpc.config import Config
from rpc.errors import RpcError
from rpc.gateway_limits import RateLimit

if TYPE_CHECKING:
    from rpc.gateway_access import GatewayAccess

_Command = TypeVar("_Command", bound=Callable[..., Any])


@click.command("permissions")
@click.argument("services", nargs=-1)
@click.option(
    "--role",
    type=click.Choice(broker_permissions.ROLES),
    default="worker",
    show_default=True,
    help="Who the user is: a worker of SERVICES, a client or gateway calling "
    "them (any service when none is given), or the operator tools.",
)
@click.option("--user", help="The RabbitMQ user [default: the URL's user].")
@click.option("--vhost", help="The vhost [default: the URL's, else /].")
@click.option(
    "--broker", envvar="RPC_BROKER_URL", help="AMQP URL [env: RPC_BROKER_URL]"
)
def permissions(
    services: tuple[str, ...],
    role: str,
    user: str | None,
    vhost: str | None,
    broker: str | None,
) -> None:
    """Print the rabbitmqctl lines that give a user only what ROLE needs."""
    try:
        url = Config.load(broker_url=broker).broker_url.split(";")[0]
        granted = broker_permissions.for_role(role, list(services))
    except (RpcError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    parts = urlsplit(url)
    user = user or unquote(parts.username or "guest")
    vhost = vhost or unquote(parts.path[1:]) or "/"
    for line in granted.commands(user, vhost):
        click.echo(line)


@click.command("gateway-token")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    metavar="SERVICE.METHOD",
    help="What the token may call: greeter.hello, greeter.*, * (repeatable).",
)
def gateway_token(name: str, scopes: tuple[str, ...]) -> None:
    """Make a new gateway API token called NAME.

    Prints the token once, on standard error, and the tokens-file entry on standard
    output: the file keeps only the token's SHA-256, so it reveals nothing.
    """
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    click.echo(
        f"token for {name} (shown once; give it to the client): {token}", err=True
    )
    click.echo(f"- name: {name}")
    click.echo(f"  sha256: {digest}")
    click.echo(f"  scopes: [{', '.join(repr(scope) for scope in scopes)}]")


def gateway_access_options(command: _Command) -> _Command:
    """The gateway's access flags; :func:`gateway_access` makes the policy of them."""
    options = [
        click.option(
            "--tokens-file",
            type=click.Path(dir_okay=False),
            envvar="RPC_GATEWAY_TOKENS_FILE",
            help="YAML or JSON file of API tokens: name, sha256 (or token), scopes "
            "[env: RPC_GATEWAY_TOKENS_FILE; or the document itself in "
            "RPC_GATEWAY_TOKENS].",
        ),
        click.option(
            "--allow-anonymous",
            is_flag=True,
            help="Serve requests without a token too (to what --expose allows).",
        ),
        click.option(
            "--expose",
            multiple=True,
            metavar="SERVICE.METHOD",
            help="Serve only these (greeter.hello, 'shop.*'; repeatable): the rest "
            "is neither callable nor listed. Default: everything.",
        ),
        click.option(
            "--cors-origin",
            "cors_origins",
            multiple=True,
            metavar="ORIGIN",
            help="A browser origin allowed to call (https://app.example; "
            "repeatable). Default: none.",
        ),
        click.option(
            "--rate-limit",
            type=click.FloatRange(min=0, min_open=True),
            help="Requests a second per token (a token bucket); 429 past it.",
        ),
        click.option(
            "--burst",
            type=click.IntRange(min=1),
            help="Requests a token may make at once over its rate [default: the "
            "rate, at least 1].",
        ),
        click.option(
            "--max-concurrent",
            type=click.IntRange(min=1),
            help="Requests in progress per token; 429 past it.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


#: The parameters :func:`gateway_access_options` gives a command.
ACCESS_OPTIONS = (
    "tokens_file",
    "allow_anonymous",
    "expose",
    "cors_origins",
    "rate_limit",
    "burst",
    "max_concurrent",
)


def gateway_access(
    *,
    tokens_file: str | None,
    allow_anonymous: bool,
    expose: tuple[str, ...],
    cors_origins: tuple[str, ...],
    rate_limit: float | None,
    burst: int | None,
    max_concurrent: int | None,
) -> GatewayAccess:
    """The policy the flags of :func:`gateway_access_options` describe.

    Refuses (UsageError) a gateway nobody could use: no token and no
    ``--allow-anonymous``.
    """
    # aiohttp is imported only by the command that serves.
    from rpc.gateway_access import GatewayAccess, load_tokens

    try:
        tokens = load_tokens(tokens_file)
        rate = None
        if rate_limit is not None:
            rate = RateLimit(rate_limit, burst or max(1, math.ceil(rate_limit)))
        access = GatewayAccess(
            tokens=tokens,
            allow_anonymous=allow_anonymous,
            expose=expose,
            rate=rate,
            max_concurrent=max_concurrent,
            cors_origins=cors_origins,
        )
    except (RpcError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if access.refuses_everyone:
        raise click.UsageError(
            "the gateway has no tokens: give --tokens-file (or RPC_GATEWAY_TOKENS), "
            "or --allow-anonymous to serve without authentication"
        )
    return access
