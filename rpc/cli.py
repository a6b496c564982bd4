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

from rpc import __version__
from rpc import dead_letters as dead_letter_tool
from rpc.broker import ensure_broker
from rpc.cache import commands as cache_commands
from rpc.call_log import CALL_LOG_PATH
from rpc.cli_base import Progress, RpcGroup, shared_options, verbosity
from rpc.cli_settings import CLIENT, OBSERVING, WORKER, load_config, settings
from rpc.config import Config
from rpc.discovery import DISCOVERY_QUIET, DISCOVERY_WAIT
from rpc.errors import RemoteError, RpcError, UnknownServiceError
from rpc.local_cluster import LocalCluster
from rpc.logs import status
from rpc.observability.cli import configure_log_format, supervise
from rpc.observability.status import status_command
from rpc.proxy import ClusterProxy
from rpc.security_cli import (
    ACCESS_OPTIONS,
    gateway_access,
    gateway_access_options,
    gateway_token,
    permissions,
)
from rpc.service import import_service
from rpc.supervisor import process_count, serve
from rpc.worker import ServiceRunner

_Command = TypeVar("_Command", bound=Callable[..., Any])


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


@click.group(cls=RpcGroup)
@click.version_option(__version__, "--version", prog_name="rpc")
def main() -> None:
    """AMQP RPC microservices on RabbitMQ.

    -v (before or after the command) logs each call and request, -vv everything.
    """


# -v and --app-dir, taken before the subcommand too; they add up with its own.
main.params.extend(shared_options())


@main.command()
@click.argument("services", nargs=-1, required=True)
@settings(*WORKER)
@click.option(
    "--processes",
    metavar="N|auto",
    help="Run N worker processes under a supervisor (auto: one per CPU).",
)
def run(
    services: tuple[str, ...],
    config_file: str | None,
    processes: str | None,
    **values: Any,
) -> None:
    """Run a worker daemon for SERVICES, given as module:Class.

    Modules are found in the current directory (or --app-dir) first.
    """
    config = load_config(config_file, **values)
    if verbosity() >= 1 and CALL_LOG_PATH not in config.middleware:
        # One line per handler run; without -v, nothing on the call path.
        config = config.replace(middleware=(*config.middleware, CALL_LOG_PATH))
    configure_log_format(config.log_format)
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
        try:
            code = supervise(classes, config, count)
        except RpcError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        sys.exit(code)
    stop = threading.Event()
    received: list[signal.Signals] = []

    def on_stop_signal(signum: int, frame: object) -> None:
        if not received:
            received.append(signal.Signals(signum))
            status.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_stop_signal)
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
    reason = received[0].name if received else "its services stopped"
    status.info("exiting with 0 (%s)", reason)


@main.command()
@click.argument("target", metavar="SERVICE.METHOD")
@click.argument("arguments", default="{}", metavar="[JSON]")
@settings(*CLIENT)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds to keep retrying while no worker of the service has started yet.",
)
def call(
    target: str,
    arguments: str,
    config_file: str | None,
    wait: float,
    **values: Any,
) -> None:
    """Call SERVICE.METHOD with JSON: an object for kwargs, a list for args."""
    service, method, args, kwargs = _parse_call(target, arguments)
    config = load_config(config_file, **values)
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
@settings(*CLIENT)
def cast(target: str, arguments: str, config_file: str | None, **values: Any) -> None:
    """Send SERVICE.METHOD a request wanting no reply; exit once the broker has it.

    --timeout is how long to wait for the broker's confirm.
    """
    service, method, args, kwargs = _parse_call(target, arguments)
    config = load_config(config_file, **values)
    with _client(config) as cluster:
        cluster.cast(service, method, args, kwargs)


@main.command()
@click.argument("source", metavar="SOURCE_SERVICE")
@click.argument("event_type")
@click.argument("payload", default="null", metavar="[JSON]")
@settings(*CLIENT)
def dispatch(
    source: str,
    event_type: str,
    payload: str,
    config_file: str | None,
    **values: Any,
) -> None:
    """Publish an event of EVENT_TYPE as SOURCE_SERVICE, with a JSON payload.

    --timeout is how long to wait for the broker's confirm.
    """
    value = _parse_json(payload)
    config = load_config(config_file, **values)
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
    said = False
    while True:
        try:
            return cluster.call(service, method, args, kwargs)
        except UnknownServiceError:
            if time.monotonic() >= give_up:
                raise
            if not said:
                said = True
                status.info("no worker of %s yet; waiting up to %g s...", service, wait)
            time.sleep(0.5)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@settings(*CLIENT, *OBSERVING)
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
    config_file: str | None,
    max_body: int,
    discovery_wait: float,
    discovery_quiet: float,
    header_timeout: float,
    idle_timeout: float,
    max_connections: int,
    **values: Any,
) -> None:
    """Serve HTTP: POST /SERVICE/METHOD with JSON arguments calls the service.

    Every request needs an API token from --tokens-file, unless --allow-anonymous.
    -v logs every request (client, method, path, status, milliseconds).
    """
    from rpc.gateway import serve  # aiohttp is only needed here
    from rpc.gateway_server import CannotListenError

    access = gateway_access(**{name: values.pop(name) for name in ACCESS_OPTIONS})
    config = load_config(config_file, **values)
    configure_log_format(config.log_format)
    try:
        serve(
            config,
            host=host,
            port=port,
            # Said once it listens: a busy port or a bad host fails before.
            on_listening=lambda bound, at: click.echo(
                f"gateway on http://{bound}:{at}; Ctrl+C stops", err=True
            ),
            max_body=max_body,
            discovery_wait=discovery_wait,
            discovery_quiet=discovery_quiet,
            header_timeout=header_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            access=access,
        )
    except CannotListenError as exc:
        click.echo(f"error: the gateway {exc.strerror}", err=True)
        sys.exit(1)


@main.command("dead-letters")
@click.argument("service")
@settings("broker_url", "connect_timeout")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--requeue",
    is_flag=True,
    help="Move them back to the queue they came from, as fresh messages.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_letters(
    service: str,
    config_file: str | None,
    limit: int,
    requeue: bool,
    as_json: bool,
    **values: Any,
) -> None:
    """List the poison messages of SERVICE (they stay queued unless --requeue)."""
    config = load_config(config_file, **values)
    try:
        listing = dead_letter_tool.look(
            config,
            service,
            limit=limit,
            requeue=requeue,
            progress=Progress("requeued" if requeue else "read"),
        )
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
@settings("broker_url")
@click.option("--no-install", is_flag=True, help="Never install RabbitMQ.")
def broker_ensure(config_file: str | None, no_install: bool, **values: Any) -> None:
    """Make sure the broker is reachable: start or install a local RabbitMQ."""
    config = load_config(config_file, **values)
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


def _register() -> None:
    """Commands kept in modules of their own."""
    from rpc.cli_shell import shell

    main.add_command(shell)
    main.add_command(cache_commands.cache)
    main.add_command(status_command)
    broker.add_command(permissions)
    main.add_command(gateway_token)


_register()
