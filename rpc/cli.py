"""The ``rpc`` command: run services, call them, make sure a broker is there."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from rpc import dead_letters as dead_letter_tool
from rpc.broker import ensure_broker
from rpc.cache import commands as cache_commands
from rpc.config import Config
from rpc.discovery import DISCOVERY_QUIET, DISCOVERY_WAIT
from rpc.errors import RemoteError, RpcError, UnknownServiceError
from rpc.local_cluster import LocalCluster
from rpc.proxy import ClusterProxy
from rpc.security_cli import (
    gateway_access,
    gateway_access_options,
    gateway_token,
    permissions,
)
from rpc.service import import_service
from rpc.supervisor import Supervisor, process_count, serve
from rpc.worker import ServiceRunner

_Command = TypeVar("_Command", bound=Callable[..., Any])

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"

broker_option = click.option(
    "--broker", envvar="RPC_BROKER_URL", help="AMQP URL [env: RPC_BROKER_URL]"
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="RPC_CONFIG",
    help="YAML settings file [env: RPC_CONFIG]",
)


def _seconds(
    name: str, default: float, text: str, *, positive: bool = False
) -> Callable[[_Command], _Command]:
    """A duration flag, its default shown; ``positive`` refuses zero."""
    return click.option(
        name,
        type=click.FloatRange(min=0, min_open=positive),
        default=default,
        show_default=True,
        help=text,
    )


def _load_config(config_file: str | None, **flags: Any) -> Config:
    try:
        return Config.load(config_file, **flags)
    except RpcError as exc:
        raise click.UsageError(str(exc)) from exc


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """AMQP RPC microservices on RabbitMQ."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose + 1, 2)]
    logging.basicConfig(level=level, format=LOG_FORMAT)


@main.command()
@click.argument("services", nargs=-1, required=True)
@broker_option
@config_option
@click.option("--max-workers", type=click.IntRange(min=1), help="Handler threads.")
@click.option(
    "--max-async", type=click.IntRange(min=1), help="async handlers run at once."
)
@click.option(
    "--processes",
    metavar="N|auto",
    help="Run N worker processes under a supervisor (auto: one per CPU).",
)
@click.option(
    "--middleware",
    multiple=True,
    metavar="module:Class",
    help="Wrap every handler run (repeatable; replaces the configured list).",
)
def run(
    services: tuple[str, ...],
    broker: str | None,
    config_file: str | None,
    max_workers: int | None,
    max_async: int | None,
    processes: str | None,
    middleware: tuple[str, ...],
) -> None:
    """Run a worker daemon for SERVICES, given as module:Class."""
    config = _load_config(
        config_file,
        broker_url=broker,
        max_workers=max_workers,
        max_async=max_async,
        middleware=middleware or None,
    )
    try:
        classes = [import_service(path) for path in services]
        count = None if processes is None else process_count(processes)
        # Check the classes here, so a bad service fails once, not in every child.
        names = list(ServiceRunner(classes, config).services)
    except RpcError as exc:
        raise click.UsageError(str(exc)) from exc
    if count is not None:
        click.echo(
            f"serving {', '.join(names)} in {count} processes; Ctrl+C stops", err=True
        )
        sys.exit(Supervisor(classes, config, processes=count).run())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # SIGHUP would kill the process without draining; replacing workers needs a
    # supervisor, so a single process only says so.
    signal.signal(
        signal.SIGHUP,
        lambda *_: logging.getLogger(__name__).warning(
            "SIGHUP ignored: run with --processes to replace workers on SIGHUP"
        ),
    )
    try:
        serve(
            classes,
            config,
            stop,
            on_ready=lambda: click.echo(
                f"serving {', '.join(names)}; Ctrl+C stops", err=True
            ),
        )
    except RpcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.argument("target", metavar="SERVICE.METHOD")
@click.argument("arguments", default="{}", metavar="[JSON]")
@broker_option
@config_option
@click.option("--timeout", type=float, help="Seconds to wait for the reply.")
@click.option(
    "--wait",
    type=float,
    default=0.0,
    help="Seconds to keep retrying while no worker of the service has started yet.",
)
def call(
    target: str,
    arguments: str,
    broker: str | None,
    config_file: str | None,
    timeout: float | None,
    wait: float,
) -> None:
    """Call SERVICE.METHOD with JSON: an object for kwargs, a list for args."""
    service, method, args, kwargs = _parse_call(target, arguments)
    config = _load_config(config_file, broker_url=broker, default_timeout=timeout)
    with _client(config) as cluster:
        result = _call_when_served(cluster, service, method, args, kwargs, wait)
    click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


@contextlib.contextmanager
def _client(config: Config) -> Iterator[ClusterProxy]:
    """A client for one command; an error ends the command with exit status 1."""
    try:
        with ClusterProxy(config=config) as cluster:
            yield cluster
    except RemoteError as exc:
        click.echo(f"{exc.exc_type}: {exc.message}", err=True)
        sys.exit(1)
    except (RpcError, ValueError) as exc:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


def _parse_call(
    target: str, arguments: str
) -> tuple[str, str, list[Any], dict[str, Any]]:
    service, dot, method = target.partition(".")
    if not dot or not service or not method:
        raise click.UsageError(f"expected SERVICE.METHOD, got {target!r}")
    parsed = _parse_json(arguments)
    if isinstance(parsed, list):
        return service, method, parsed, {}
    if isinstance(parsed, dict):
        return service, method, [], parsed
    raise click.UsageError("arguments must be a JSON object (kwargs) or list (args)")


def _parse_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.UsageError(f"not valid JSON: {exc}") from exc


@main.command()
@click.argument("target", metavar="SERVICE.METHOD")
@click.argument("arguments", default="{}", metavar="[JSON]")
@broker_option
@config_option
@click.option("--timeout", type=float, help="Seconds to wait for the broker's confirm.")
def cast(
    target: str,
    arguments: str,
    broker: str | None,
    config_file: str | None,
    timeout: float | None,
) -> None:
    """Send SERVICE.METHOD a request wanting no reply; exit once the broker has it."""
    service, method, args, kwargs = _parse_call(target, arguments)
    config = _load_config(config_file, broker_url=broker, default_timeout=timeout)
    with _client(config) as cluster:
        cluster.cast(service, method, args, kwargs)


@main.command()
@click.argument("source", metavar="SOURCE_SERVICE")
@click.argument("event_type")
@click.argument("payload", default="null", metavar="[JSON]")
@broker_option
@config_option
@click.option("--timeout", type=float, help="Seconds to wait for the broker's confirm.")
def dispatch(
    source: str,
    event_type: str,
    payload: str,
    broker: str | None,
    config_file: str | None,
    timeout: float | None,
) -> None:
    """Publish an event of EVENT_TYPE as SOURCE_SERVICE, with a JSON payload."""
    value = _parse_json(payload)
    config = _load_config(config_file, broker_url=broker, default_timeout=timeout)
    with _client(config) as cluster:
        cluster.dispatch(source, event_type, value)


def _call_when_served(
    cluster: ClusterProxy,
    service: str,
    method: str,
    args: list[Any],
    kwargs: dict[str, Any],
    wait: float,
) -> Any:
    # Only "no queue yet" is retried: any other failure is an answer.
    give_up = time.monotonic() + wait
    while True:
        try:
            return cluster.call(service, method, args, kwargs)
        except UnknownServiceError:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.5)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@broker_option
@config_option
@click.option("--timeout", type=float, help="Seconds a call may take by default.")
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=1024 * 1024,
    show_default=True,
    help="Largest request body accepted, in bytes.",
)
@_seconds(
    "--discovery-wait",
    DISCOVERY_WAIT,
    "Longest time GET /services waits for the workers' answers, in seconds.",
)
@_seconds(
    "--discovery-quiet",
    DISCOVERY_QUIET,
    "GET /services answers once no worker answered for this long, in seconds.",
)
# The defaults are rpc.gateway_server's, repeated: aiohttp is imported only to serve.
@_seconds(
    "--header-timeout",
    10.0,
    "Seconds a client has to send a request's headers.",
    positive=True,
)
@_seconds(
    "--idle-timeout",
    75.0,
    "Seconds an idle keep-alive connection is kept open.",
    positive=True,
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Connections served at once; past it, new ones are answered 503.",
)
@gateway_access_options
def gateway(
    host: str,
    port: int,
    broker: str | None,
    config_file: str | None,
    timeout: float | None,
    max_body: int,
    discovery_wait: float,
    discovery_quiet: float,
    header_timeout: float,
    idle_timeout: float,
    max_connections: int,
    **access_options: Any,
) -> None:
    """Serve HTTP: POST /SERVICE/METHOD with JSON arguments calls the service.

    Every request needs an API token from --tokens-file, unless --allow-anonymous.
    """
    from rpc.gateway import serve  # aiohttp is only needed here

    access = gateway_access(**access_options)
    config = _load_config(config_file, broker_url=broker, default_timeout=timeout)
    click.echo(f"gateway on http://{host}:{port}; Ctrl+C stops", err=True)
    serve(
        config,
        host=host,
        port=port,
        max_body=max_body,
        discovery_wait=discovery_wait,
        discovery_quiet=discovery_quiet,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        access=access,
    )


@main.command("dead-letters")
@click.argument("service")
@broker_option
@config_option
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--requeue",
    is_flag=True,
    help="Move them back to the queue they came from, as fresh messages.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_letters(
    service: str,
    broker: str | None,
    config_file: str | None,
    limit: int,
    requeue: bool,
    as_json: bool,
) -> None:
    """List the poison messages of SERVICE (they stay queued unless --requeue)."""
    config = _load_config(config_file, broker_url=broker)
    try:
        listing = dead_letter_tool.look(config, service, limit=limit, requeue=requeue)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except RpcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    letters = listing.letters
    for letter in letters:
        body = letter.body.decode("utf-8", errors="replace")
        if as_json:
            line = {
                "reason": letter.reason,
                "detail": letter.detail,
                "method": letter.method,
                "event_type": letter.event_type,
                "queue": letter.queue,
                "body": body,
            }
            click.echo(orjson.dumps(line).decode())
        else:
            where = letter.method or "-"
            if letter.event_type:
                where = f"{where} (event {letter.event_type})"
            click.echo(f"{letter.reason}\t{where}\t{letter.detail}")
            click.echo(f"    {body[:200]}")
    held = max(listing.waiting, len(letters))
    if len(letters) < held:
        click.echo(
            f"{held} message(s) in the dead-letter queue, {len(letters)} "
            f"{'requeued or kept' if requeue else 'printed'} (--limit {limit})",
            err=True,
        )
    if not requeue:
        if len(letters) == held:
            click.echo(f"{held} message(s) in the dead-letter queue", err=True)
        return
    requeued = sum(letter.requeued for letter in letters)
    click.echo(f"{requeued} message(s) requeued", err=True)
    if requeued < len(letters):
        click.echo(
            f"{len(letters) - requeued} message(s) kept: no queue took them "
            "(a broadcast handler's worker that stopped, or a sharded service "
            "with no worker)",
            err=True,
        )
        sys.exit(1)


@main.group()
def broker() -> None:
    """Broker helpers."""


@broker.command("ensure")
@broker_option
@config_option
@click.option("--no-install", is_flag=True, help="Never install RabbitMQ.")
def broker_ensure(
    broker: str | None, config_file: str | None, no_install: bool
) -> None:
    """Make sure the broker is reachable: start or install a local RabbitMQ."""
    config = _load_config(config_file, broker_url=broker)
    try:
        click.echo(ensure_broker(config.broker_url, install=not no_install))
    except RpcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@broker.command("cluster")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    help="Node N listens on BASE_PORT + N (default: free ports).",
)
@click.option(
    "--directory",
    type=click.Path(file_okay=False),
    help="Where the nodes keep their data and logs (default: a new temporary one).",
)
def broker_cluster(nodes: int, base_port: int | None, directory: str | None) -> None:
    """Run a private RabbitMQ cluster on this machine until Ctrl+C.

    Made from the installed rabbitmq-server, on loopback ports of its own: the
    machine's own broker is never touched. Prints the URL list to give --broker.
    """
    base = (
        Path(directory) if directory else Path(tempfile.mkdtemp(prefix="rpc-cluster-"))
    )
    cluster = LocalCluster(base, nodes=nodes, base_port=base_port)
    click.echo(f"starting {nodes} RabbitMQ nodes in {base} ...", err=True)
    try:
        cluster.start()
    except RpcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for node in cluster.nodes:
        click.echo(f"node {node.index}: {node.name} on {node.url}", err=True)
    click.echo(f'export RPC_BROKER_URL="{cluster.broker_url}"')
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        click.echo("stopping the cluster ...", err=True)
        cluster.stop()


main.add_command(cache_commands.cache)
broker.add_command(permissions)
main.add_command(gateway_token)
