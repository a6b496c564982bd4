"""``rpc cache``: install Memcached, drop entries, and fill the cache before traffic.

``invalidate`` and ``warm`` go through a running worker of the service, which
builds keys with the method's own signature, version and key function: the shell
never has to know them. Both first check, through discovery, that the method is
cached, so they never run a method that is not.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from rpc.cache.servers import ensure_memcached, parse_server
from rpc.config import Config
from rpc.errors import RemoteError, RpcError
from rpc.middleware import ClientCall, Middleware
from rpc.protocol import CACHE_INVALIDATE, CACHE_REFRESH, HEADER_CACHE
from rpc.proxy import ClusterProxy

#: Seconds discovery waits for the workers to say what they serve.
DISCOVERY_WAIT = 3.0

_broker_option = click.option(
    "--broker", envvar="RPC_BROKER_URL", help="AMQP URL [env: RPC_BROKER_URL]"
)
_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="RPC_CONFIG",
    help="YAML settings file [env: RPC_CONFIG]",
)


class CacheCommand(Middleware):
    """Marks every call a proxy sends with what the worker's cache should do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def before_send(self, call: ClientCall) -> None:
        call.headers[HEADER_CACHE] = self.command


@click.group()
def cache() -> None:
    """The result cache: Memcached, invalidation, pre-warming."""


@cache.command("ensure")
@_config_option
@click.option("--no-install", is_flag=True, help="Never install Memcached.")
def ensure(config_file: str | None, no_install: bool) -> None:
    """Make sure Memcached is installed (apt-get as root) and local servers run."""
    config = _load_config(config_file)
    try:
        servers = [parse_server(server) for server in config.cache_servers]
        for line in ensure_memcached(servers, install=not no_install):
            click.echo(line)
    except RpcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@cache.command("invalidate")
@click.argument("target", metavar="SERVICE.METHOD")
@click.argument("arguments", default="{}", metavar="[JSON]")
@_broker_option
@_config_option
def invalidate(
    target: str, arguments: str, broker: str | None, config_file: str | None
) -> None:
    """Drop the cached result of SERVICE.METHOD for these arguments.

    JSON as for ``rpc call``: an object of keyword arguments or a list of
    positional ones. A worker of the service must be running.
    """
    service, method = _target(target)
    args, kwargs = _arguments(_parse_json(arguments, "arguments"))
    config = _load_config(config_file, broker_url=broker)
    with _CachedMethod(config, service, method, CACHE_INVALIDATE) as cluster:
        answer = cluster.call(service, method, args, kwargs)
    key = answer.get("key") if isinstance(answer, dict) else None
    deleted = isinstance(answer, dict) and answer.get("deleted") is True
    click.echo(f"{'invalidated' if deleted else 'no entry for'} {key}")


@cache.command("warm")
@click.argument("target", metavar="SERVICE.METHOD")
@click.option(
    "--args-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="One JSON argument list (or object of keyword arguments) per line.",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 1000), default=16, show_default=True
)
@click.option(
    "--refresh", is_flag=True, help="Run every call again, even where one is cached."
)
@_broker_option
@_config_option
def warm(
    target: str,
    args_file: Path,
    concurrency: int,
    refresh: bool,
    broker: str | None,
    config_file: str | None,
) -> None:
    """Fill the cache of SERVICE.METHOD by calling it for each line of a file."""
    service, method = _target(target)
    calls = list(_read_args_file(args_file))
    config = _load_config(config_file, broker_url=broker)
    failed: list[tuple[int, Exception]] = []
    command = CACHE_REFRESH if refresh else None
    with _CachedMethod(config, service, method, command) as cluster:
        results = getattr(cluster[service], method).starmap(
            (arguments for _, arguments in calls),
            max_in_flight=concurrency,
            return_exceptions=True,
        )
        with click.progressbar(
            results, length=len(calls), label=f"warming {target}", file=sys.stderr
        ) as bar:
            for (line, _), result in zip(calls, bar, strict=True):
                if isinstance(result, Exception):
                    failed.append((line, result))
    for line, error in failed[:10]:
        click.echo(f"line {line}: {_describe_error(error)}", err=True)
    click.echo(
        f"{len(calls) - len(failed)} calls of {target} cached, {len(failed)} failed"
    )
    if failed:
        sys.exit(1)


def _read_args_file(path: Path) -> Iterator[tuple[int, Any]]:
    """Every line's arguments, checked before any call is sent."""
    items = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        value = _parse_json(text, f"{path}, line {number}")
        if not isinstance(value, (list, dict)):
            raise click.UsageError(
                f"{path}, line {number}: expected a JSON list or object, got {text!r}"
            )
        items.append((number, value))
    return iter(items)


class _CachedMethod:
    """A client whose calls carry the cache command; refuses an uncached method."""

    def __init__(
        self, config: Config, service: str, method: str, command: str | None
    ) -> None:
        middleware = [CacheCommand(command)] if command is not None else []
        self._cluster = ClusterProxy(config=config, middleware=middleware)
        self._service = service
        self._method = method

    def __enter__(self) -> ClusterProxy:
        try:
            self._cluster.start()
            listing = self._cluster.discover(wait=DISCOVERY_WAIT)
        except RpcError as exc:
            self._cluster.stop()
            _fail(exc)
        described = listing.get(self._service, {}).get("methods", {}).get(self._method)
        if described is None or "cache" not in described:
            self._cluster.stop()
            what = (
                "is not running"
                if self._service not in listing
                else (
                    f"has no method {self._method!r}"
                    if described is None
                    else f"does not cache {self._method!r}"
                )
            )
            click.echo(f"error: service {self._service!r} {what}", err=True)
            sys.exit(1)
        return self._cluster

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        self._cluster.stop()
        if isinstance(exc, (RpcError, ValueError, TypeError)):
            _fail(exc)


def _fail(exc: BaseException) -> None:
    click.echo(f"error: {_describe_error(exc)}", err=True)
    sys.exit(1)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return f"{exc.exc_type}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _target(target: str) -> tuple[str, str]:
    service, dot, method = target.partition(".")
    if not dot or not service or not method:
        raise click.UsageError(f"expected SERVICE.METHOD, got {target!r}")
    return service, method


def _arguments(value: Any) -> tuple[list[Any], dict[str, Any]]:
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise click.UsageError("arguments must be a JSON object (kwargs) or list (args)")


def _parse_json(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.UsageError(f"{what}: not valid JSON: {exc}") from exc


def _load_config(config_file: str | None, **flags: Any) -> Config:
    try:
        return Config.load(config_file, **flags)
    except RpcError as exc:
        raise click.UsageError(str(exc)) from exc
