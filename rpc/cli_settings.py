"""A flag for every setting of :class:`~rpc.config.Config`, on the commands it affects.

:data:`FLAGS` is the one table: the flag of each setting, its type and its help.
``@settings("heartbeat", "connect_timeout")`` adds those flags to a command, and
:func:`load_config` builds the command's :class:`Config` from them (flags win over
``RPC_*`` variables, which win over the file), naming in an error the flag the
user typed rather than the setting behind it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
import yaml

from rpc.config import QUEUE_TYPES, Config
from rpc.errors import ConfigError

_Command = TypeVar("_Command", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one setting is given on the command line."""

    name: str
    type: Any
    help: str
    multiple: bool = False
    metavar: str | None = None
    envvar: str | None = None


FLAGS: dict[str, Flag] = {
    "broker_url": Flag(
        "--broker", str, "AMQP URL [env: RPC_BROKER_URL]", envvar="RPC_BROKER_URL"
    ),
    "default_timeout": Flag("--timeout", float, "Seconds a call waits for its reply."),
    "max_workers": Flag("--max-workers", int, "Handler threads per process."),
    "max_async": Flag("--max-async", int, "async handlers run at once per process."),
    "heartbeat": Flag("--heartbeat", float, "AMQP heartbeat in seconds (0: off)."),
    "connect_timeout": Flag(
        "--connect-timeout", float, "Seconds to keep trying to reach the broker."
    ),
    "max_message_bytes": Flag(
        "--max-message-bytes", int, "Largest request or reply accepted, in bytes."
    ),
    "queue_type": Flag("--queue-type", click.Choice(QUEUE_TYPES), "Queues to declare."),
    "delivery_limit": Flag(
        "--delivery-limit", int, "Deliveries of a message before it is dead-lettered."
    ),
    "retry_delay": Flag(
        "--retry-delay", float, "Seconds before a failed event or cast runs again."
    ),
    "retry_max_delay": Flag(
        "--retry-max-delay", float, "Longest wait between two runs of a failing one."
    ),
    "shutdown_timeout": Flag(
        "--shutdown-timeout", float, "Seconds a stop waits for calls in progress."
    ),
    "middleware": Flag(
        "--middleware",
        str,
        "Wrap every handler run and send (repeatable; replaces the configured list).",
        multiple=True,
        metavar="module:Class",
    ),
    "cache_servers": Flag(
        "--cache-server",
        str,
        "A Memcached server of the result cache (repeatable) [env: RPC_CACHE_SERVERS].",
        multiple=True,
        metavar="HOST:PORT",
    ),
    "cache_timeout": Flag(
        "--cache-timeout", float, "Seconds a cache server may take before a miss."
    ),
    "cache_max_item_bytes": Flag(
        "--cache-max-item-bytes", int, "Largest item the cache servers keep, in bytes."
    ),
    "copies": Flag(
        "--copies",
        click.Choice(("confirmed", "unconfirmed")),
        "Whether a copy sent in place of a message is confirmed before its ack.",
    ),
    "reply_queue": Flag(
        "--reply-queue",
        click.Choice(("auto", "direct", "private")),
        "Where replies come back: direct reply-to, or a queue of the caller's own.",
    ),
    "extra": Flag(
        "--extra",
        str,
        "A free-form setting for services, read through Settings() (repeatable).",
        multiple=True,
        metavar="KEY=VALUE",
    ),
    "broker_urls": Flag(
        "--broker-node",
        str,
        "A node of a RabbitMQ cluster (repeatable; tried from a random one).",
        multiple=True,
        metavar="URL",
    ),
    "node_connect_timeout": Flag(
        "--node-connect-timeout", float, "Seconds one attempt on one node may take."
    ),
    "broker_order": Flag(
        "--broker-order",
        click.Choice(("random", "listed")),
        "Start at a random node of the list, or at the first.",
    ),
    "quorum_leader_locator": Flag(
        "--quorum-leader-locator",
        click.Choice(("", "balanced", "client-local")),
        "Where a new quorum queue's leader goes.",
    ),
    "quorum_group_size": Flag(
        "--quorum-group-size", int, "Nodes a new quorum queue is replicated on."
    ),
    "partitions": Flag(
        "--partitions",
        str,
        "A service spread over several queues (repeatable).",
        multiple=True,
        metavar="SERVICE=COUNT",
    ),
    "serve_partitions": Flag(
        "--serve-partition",
        int,
        "A partition this worker consumes (repeatable; default: all).",
        multiple=True,
        metavar="N",
    ),
    "metrics_port": Flag(
        "--metrics-port",
        click.IntRange(0, 65535),
        "Serve Prometheus /metrics on this port (0: none).",
    ),
    "metrics_host": Flag("--metrics-host", str, "Address /metrics listens on."),
    "tracing": Flag(
        "--tracing/--no-tracing",
        bool,
        "OpenTelemetry spans for calls, casts and events (rpc[otel]).",
    ),
    "log_format": Flag(
        "--log-format",
        click.Choice(("text", "json")),
        "Log lines for people (text) or one JSON object each (json).",
    ),
    "slow_call_seconds": Flag(
        "--slow-call-seconds",
        float,
        "Log a handler run longer than this at WARNING (0: never).",
    ),
    "ssl_ca_file": Flag(
        "--ssl-ca-file", str, "CA certificates that sign the broker's (amqps://)."
    ),
    "ssl_cert_file": Flag(
        "--ssl-cert-file", str, "This process's client certificate (amqps://)."
    ),
    "ssl_key_file": Flag("--ssl-key-file", str, "The client certificate's key."),
    "ssl_verify": Flag(
        "--ssl-verify/--no-ssl-verify",
        bool,
        "Check the broker's certificate and host name.",
    ),
    "login_method": Flag(
        "--login-method",
        click.Choice(("PLAIN", "AMQPLAIN", "EXTERNAL")),
        "How to log in; EXTERNAL: with the client certificate.",
    ),
    "trusted_identity_users": Flag(
        "--trusted-identity-user",
        str,
        "A broker user whose x-rpc-caller-identity is believed (repeatable).",
        multiple=True,
        metavar="USER",
    ),
    "max_header_fields": Flag(
        "--max-header-fields", int, "Most header fields of one message, nested too."
    ),
    "max_header_depth": Flag(
        "--max-header-depth", int, "Deepest nesting of tables in one message's headers."
    ),
    "max_header_bytes": Flag(
        "--max-header-bytes", int, "Longest single header string, in bytes."
    ),
}

#: What a client command (call, cast, dispatch, shell, gateway) connects with.
CLIENT = (
    "broker_url",
    "default_timeout",
    "heartbeat",
    "connect_timeout",
    "max_message_bytes",
    "middleware",
    "broker_urls",
    "node_connect_timeout",
    "broker_order",
    "reply_queue",
    "partitions",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_verify",
    "login_method",
    "max_header_fields",
    "max_header_depth",
    "max_header_bytes",
)
#: What the gateway takes besides the client's: how it is observed.
OBSERVING = ("metrics_port", "metrics_host", "tracing", "log_format")
#: What ``rpc run`` takes: every setting.
WORKER = tuple(FLAGS)

config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="RPC_CONFIG",
    help="YAML settings file [env: RPC_CONFIG]",
)


def settings(*names: str) -> Callable[[_Command], _Command]:
    """Add ``--config`` and the flags of the settings ``names`` to a command.

    The command receives ``config_file`` and each setting by its field name.
    """

    def decorate(command: _Command) -> _Command:
        for name in reversed(names):
            flag = FLAGS[name]
            command = click.option(
                flag.name,
                name,
                type=flag.type,
                multiple=flag.multiple,
                metavar=flag.metavar,
                envvar=flag.envvar,
                help=flag.help + _default_of(name),
            )(command)
        return config_option(command)

    return decorate


def _default_of(name: str) -> str:
    """`` [default: 30.0]`` for the help: the flag itself defaults to "not given",
    so that the environment and the file can still set it."""
    default = {field.name: field.default for field in dataclasses.fields(Config)}[name]
    if default is dataclasses.MISSING or default in ((), None):
        return ""
    return f" [default: {default}]"


def load_config(config_file: str | None, **values: Any) -> Config:
    """The command's settings: its flags (None or empty when not given) over the
    environment and the file. A bad value is a usage error that names its flag."""
    flags = {key: value for key, value in values.items() if value not in (None, ())}
    if "extra" in flags:
        flags["extra"] = _extra(flags["extra"])
    if "partitions" in flags:  # SERVICE=COUNT flags, read as the environment's are
        flags["partitions"] = ",".join(flags["partitions"])
    names = {key: FLAGS[key].name for key in flags if key in FLAGS}
    try:
        return Config.load(config_file, flag_names=names, **flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _extra(pairs: tuple[str, ...]) -> Mapping[str, Any]:
    """``KEY=VALUE`` flags as a mapping; each value is read as YAML (``3`` is 3)."""
    extra: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"expected KEY=VALUE, got {pair!r}", param_hint="'--extra'"
            )
        try:
            extra[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            extra[key.strip()] = raw
    return extra
