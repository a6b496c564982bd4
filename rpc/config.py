"""Settings: one dataclass, filled from flags, then environment, then a YAML file."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rpc import broker_urls as urls
from rpc import protocol
from rpc.credentials import masked_url
from rpc.errors import ConfigError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
ENV_PREFIX = "RPC_"
CONFIG_FILE_ENV = "RPC_CONFIG"
QUEUE_TYPES = ("classic", "quorum")
#: Where RabbitMQ (3.10+) puts the leader of a new quorum queue: on the node with the
#: fewest leaders, or on the node the declaring worker is connected to; "" sends no
#: argument, and the broker's own ``queue_leader_locator`` decides.
LEADER_LOCATORS = ("", "balanced", "client-local")
#: ``broker_order``: where in the list of brokers a connection starts.
BROKER_ORDERS = ("random", "listed")
#: Settings that name the broker: a layer that sets one replaces both of a lower one.
_BROKER_SETTINGS = ("broker_url", "broker_urls")
#: ``copies``: how a worker publishes the copy it sends in place of a message.
COPY_MODES = ("confirmed", "unconfirmed")
#: ``reply_queue``: where a caller's replies come back.
REPLY_QUEUES = ("auto", "direct", "private")
LOG_FORMATS = ("text", "json")
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a worker or a client can be told; every field has a safe default."""

    broker_url: str = DEFAULT_BROKER_URL
    #: Seconds a call waits for its reply unless the call says otherwise.
    default_timeout: float = 30.0
    #: Handlers run at once in one worker process; also the consumer prefetch.
    max_workers: int = 10
    #: ``async def`` handlers run at once on the worker's event loop; a runner that
    #: has any adds this to its prefetch.
    max_async: int = 100
    #: AMQP heartbeat in seconds; 0 turns heartbeats off.
    heartbeat: float = 30.0
    #: Seconds to keep trying to reach the broker at start-up.
    connect_timeout: float = 10.0
    #: Largest encoded request or reply accepted, in bytes.
    max_message_bytes: int = 16 * 1024 * 1024
    #: "classic" (durable, one node) or "quorum" (replicated, for clusters).
    queue_type: str = "classic"
    #: Deliveries of one message before it is dead-lettered as poison.
    delivery_limit: int = 5
    #: Seconds before an event or a cast whose handler raised runs again; doubles
    #: after each failed run. 0 runs it again at once.
    retry_delay: float = 1.0
    #: Longest wait between two runs, however often the handler failed.
    retry_max_delay: float = 30.0
    #: Seconds a graceful stop waits for handlers in progress.
    shutdown_timeout: float = 60.0
    #: Middlewares around every handler run and send, as ``module:Class`` paths;
    #: a runner or a proxy puts them after the ones it is given in code.
    middleware: tuple[str, ...] = ()
    #: "confirmed": every copy a worker sends in place of a message (retry, counted
    #: requeue, dead letter, shard forward) is confirmed by the broker before the
    #: original is acknowledged. "unconfirmed" saves a round trip per copy, and on
    #: a cluster loses copies sent to a queue whose node just died.
    copies: str = "confirmed"
    #: "direct": RabbitMQ's direct reply-to, the fastest. "private": a reply queue
    #: of each caller's own, which a worker can always publish to, even once the
    #: caller's node is gone. "auto": private with quorum queues or several broker
    #: URLs (a cluster), else direct.
    reply_queue: str = "auto"
    #: Free-form settings for services, read through the ``Config`` dependency.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Memcached servers of the result cache (``host:port``); none: nothing cached.
    cache_servers: tuple[str, ...] = ()
    #: Seconds a cache server may take to answer before it counts as down.
    cache_timeout: float = 0.25
    #: Largest item the cache servers keep (memcached ``-I``), key and value.
    cache_max_item_bytes: int = 1024 * 1024
    #: The nodes of a RabbitMQ cluster, tried in turn from a random one; when set,
    #: ``broker_url`` is these joined by ``;`` (see docs/cluster.md).
    broker_urls: tuple[str, ...] = ()
    #: Seconds one attempt on one node may take, TCP connect and AMQP handshake
    #: together, before the next node of the list is tried.
    node_connect_timeout: float = 2.0
    #: "random": each connection starts at a random node of ``broker_urls``, so load
    #: spreads; "listed": at the first, then the next (a preferred nearby node).
    broker_order: str = "random"
    #: Where a new quorum queue's leader goes: "balanced" or "client-local"; "" (the
    #: default) leaves it to the broker. Queue arguments: see docs/cluster.md before
    #: changing it on queues that exist.
    quorum_leader_locator: str = ""
    #: Nodes a new quorum queue is replicated on; 0 (the default) leaves it to the
    #: broker. A queue argument too.
    quorum_group_size: int = 0
    #: Services spread over several queues, by name: ``{"orders": 3}``.
    partitions: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: The partitions this worker consumes, of every partitioned service it runs;
    #: empty for all of them.
    serve_partitions: tuple[int, ...] = ()
    # -- observability (rpc.observability) --
    #: Port of the worker's (or gateway's) Prometheus ``/metrics``; 0: none.
    metrics_port: int = 0
    #: Address ``/metrics`` listens on; 0.0.0.0 lets a Prometheus elsewhere scrape.
    metrics_host: str = "127.0.0.1"
    #: OpenTelemetry spans for every call, cast and event (needs ``rpc[otel]``).
    tracing: bool = False
    #: "text" (for people) or "json" (one object per line, for log collectors).
    log_format: str = "text"
    #: A handler run longer than this many seconds is logged at WARNING; 0: never.
    slow_call_seconds: float = 0.0

    # -- security: see docs/security.md ---------------------------------------------
    #: CA certificates (PEM) that sign the broker's certificate, for ``amqps://``;
    #: unset, the system's CAs.
    ssl_ca_file: str | None = None
    #: This process's client certificate and its key (PEM), when the broker asks.
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    #: Check the broker's certificate and that it names the host dialled. Turning it
    #: off leaves the link encrypted but open to anyone in the middle.
    ssl_verify: bool = True
    #: How to log in: PLAIN or AMQPLAIN (the URL's user and password), or EXTERNAL
    #: (the client certificate's name; RabbitMQ's rabbitmq_auth_mechanism_ssl).
    login_method: str = "PLAIN"
    #: Broker users (the AMQP ``user_id`` RabbitMQ checks) whose caller identity a
    #: worker believes: the gateway's. Anyone else's is ignored.
    trusted_identity_users: tuple[str, ...] = ()
    #: Bounds on one message's headers: fields (nested ones included), nesting of
    #: tables and arrays, and bytes of a single string or byte array. A message over
    #: them is dead-lettered as malformed.
    max_header_fields: int = 1024
    max_header_depth: int = 32
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        _check_types(self)
        self._check_cluster_settings()
        if self.default_timeout <= 0:
            raise _invalid("default_timeout", "must be positive")
        if self.max_workers < 1:
            raise _invalid("max_workers", "must be at least 1")
        if self.max_async < 1:
            raise _invalid("max_async", "must be at least 1")
        if self.heartbeat < 0:
            raise _invalid("heartbeat", "must not be negative")
        if self.connect_timeout < 0:
            raise _invalid("connect_timeout", "must not be negative")
        if self.max_message_bytes < 1024:
            raise _invalid("max_message_bytes", "must be at least 1024")
        if self.queue_type not in QUEUE_TYPES:
            raise _invalid("queue_type", f"must be one of {', '.join(QUEUE_TYPES)}")
        if self.delivery_limit < 1:
            raise _invalid("delivery_limit", "must be at least 1")
        if self.retry_delay < 0:
            raise _invalid("retry_delay", "must not be negative")
        if self.retry_max_delay < 0:
            raise _invalid("retry_max_delay", "must not be negative")
        if self.shutdown_timeout < 0:
            raise _invalid("shutdown_timeout", "must not be negative")
        if self.copies not in COPY_MODES:
            raise _invalid("copies", f"must be one of {', '.join(COPY_MODES)}")
        if self.reply_queue not in REPLY_QUEUES:
            raise _invalid("reply_queue", f"must be one of {', '.join(REPLY_QUEUES)}")
        if isinstance(self.middleware, str):
            # From the environment: RPC_MIDDLEWARE="a.b:One,c.d:Two".
            paths = tuple(p.strip() for p in self.middleware.split(",") if p.strip())
            object.__setattr__(self, "middleware", paths)
        elif not isinstance(self.middleware, tuple):
            object.__setattr__(self, "middleware", tuple(self.middleware))
        _check_broker_url(self.broker_url)
        _check_security(self)
        _check_cache_settings(self)
        self._check_observability()

    def _check_observability(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise _invalid("metrics_port", "must be between 0 and 65535")
        if isinstance(self.tracing, str):
            # From the environment: RPC_TRACING=1, true, yes (or 0, false, no).
            flag = self.tracing.strip().lower()
            if flag not in _FLAGS:
                raise _invalid(
                    "tracing", f"expected true or false, got {self.tracing!r}"
                )
            object.__setattr__(self, "tracing", _FLAGS[flag])
        if self.log_format not in LOG_FORMATS:
            raise _invalid("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
        if self.slow_call_seconds < 0:
            raise _invalid("slow_call_seconds", "must not be negative")

    def __repr__(self) -> str:
        # The generated repr would print the broker URL's password.
        shown = {field.name: getattr(self, field.name) for field in _FIELDS}
        shown["broker_url"] = urls.masked(self.broker_url)
        shown["broker_urls"] = tuple(masked_url(url) for url in self.broker_urls)
        fields = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"Config({fields})"

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed; ``None`` values leave a field as it is."""
        changes = {key: value for key, value in changes.items() if value is not None}
        if "broker_url" in changes and "broker_urls" not in changes:
            changes["broker_urls"] = ()  # a new URL (or list) replaces the old list
        return dataclasses.replace(self, **changes)

    def quorum_placement(self) -> dict[str, Any]:
        """Arguments every worker adds to the quorum queues it declares."""
        return protocol.quorum_placement(
            self.quorum_leader_locator, self.quorum_group_size
        )

    def _check_cluster_settings(self) -> None:
        """Normalise and check the settings of docs/cluster.md.

        ``broker_url`` and ``broker_urls`` end up saying the same: the list wins
        when given, else the list is ``broker_url`` split at ``;``.
        """
        given = self.broker_urls
        if isinstance(given, str):  # from the environment: RPC_BROKER_URLS="a;b"
            given = (given,)
        if given:
            nodes = urls.split_urls(given)
            object.__setattr__(self, "broker_url", urls.SEPARATOR.join(nodes))
        else:
            nodes = urls.split_urls(self.broker_url)
        object.__setattr__(self, "broker_urls", nodes)
        if self.node_connect_timeout <= 0:
            raise _invalid("node_connect_timeout", "must be positive")
        if self.broker_order not in BROKER_ORDERS:
            raise _invalid("broker_order", "must be random or listed")
        if self.quorum_leader_locator not in LEADER_LOCATORS:
            raise _invalid(
                "quorum_leader_locator", "must be balanced, client-local or empty"
            )
        if self.quorum_group_size < 0:
            raise _invalid("quorum_group_size", "must not be negative")
        object.__setattr__(self, "partitions", _partitions(self.partitions))
        object.__setattr__(
            self, "serve_partitions", _partition_indexes(self.serve_partitions)
        )

    @property
    def private_replies(self) -> bool:
        """Whether callers take replies on a queue of their own (``reply_queue``)."""
        if self.reply_queue == "auto":
            return self.queue_type == "quorum" or ";" in self.broker_url
        return self.reply_queue == "private"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        flag_names: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> Config:
        """Build settings: flags win over ``RPC_*`` variables, which win over the file.

        The YAML file is ``path``, else the file named by ``RPC_CONFIG``, else none.
        An error names the setting as the user gave it: the variable, the setting
        and its file, or the flag ``flag_names`` gives for it (``--timeout``).
        """
        environ = os.environ if environ is None else environ
        path = path or environ.get(CONFIG_FILE_ENV)
        values: dict[str, Any] = dict(_read_file(Path(path))) if path else {}
        #: What to call each setting in an error: where its value came from.
        origins = {key: key for key in values}
        in_file = set(values)
        from_environ = _read_environ(environ)
        _overlay(values, from_environ)
        origins.update({key: ENV_PREFIX + key.upper() for key in from_environ})
        in_file -= set(from_environ)
        given = {key: value for key, value in flags.items() if value is not None}
        _overlay(values, given)
        origins.update({key: (flag_names or {}).get(key, key) for key in given})
        in_file -= set(given)
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            return cls(**values)
        except ConfigError as exc:
            if exc.setting is None or exc.setting not in origins:
                raise
            where = f" (in {path})" if exc.setting in in_file else ""
            raise ConfigError(
                f"{origins[exc.setting]}: {exc.problem}{where}",
                setting=exc.setting,
                problem=exc.problem,
            ) from None
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc


def _read_file(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def _read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``RPC_*`` variables set, as numbers where the setting is one.

    A number that does not parse stays a string, which the type check then names.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Config):
        raw = environ.get(ENV_PREFIX + field.name.upper())
        if raw is None or field.name == "extra":
            continue
        kind = _kind_of(field)
        value: Any = raw
        if kind in (int, float):
            with contextlib.suppress(ValueError):
                value = kind(raw)
        elif kind is bool and raw.strip().lower() in _BOOLEANS:
            value = _BOOLEANS[raw.strip().lower()]
        values[field.name] = value
    return values


_FIELDS = dataclasses.fields(Config)
LOGIN_METHODS = ("PLAIN", "AMQPLAIN", "EXTERNAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ValueError(raw)
    return word in _TRUE


def _check_security(config: Config) -> None:
    """Check the TLS, login and header settings; normalise what the environment gave."""
    users = config.trusted_identity_users
    if isinstance(users, str):
        # From the environment: RPC_TRUSTED_IDENTITY_USERS="gateway,gateway-2".
        users = tuple(u.strip() for u in users.split(",") if u.strip())
    object.__setattr__(config, "trusted_identity_users", tuple(users))
    if not isinstance(config.ssl_verify, bool):
        raise ConfigError("ssl_verify must be true or false")
    if config.login_method not in LOGIN_METHODS:
        raise ConfigError(f"login_method must be one of {', '.join(LOGIN_METHODS)}")
    schemes = {url.strip().partition("://")[0] for url in config.broker_url.split(";")}
    tls = schemes == {"amqps"}
    if "amqps" in schemes and not tls:
        raise ConfigError("broker_url mixes amqps:// with other schemes")
    files = (config.ssl_ca_file, config.ssl_cert_file, config.ssl_key_file)
    if any(files) and not tls:
        raise ConfigError("ssl_* settings need an amqps:// broker_url")
    if config.ssl_key_file and not config.ssl_cert_file:
        raise ConfigError("ssl_key_file is set without ssl_cert_file")
    if config.login_method == "EXTERNAL" and not (tls and config.ssl_cert_file):
        raise ConfigError(
            "login_method EXTERNAL logs in with a client certificate: it needs "
            "an amqps:// broker_url and ssl_cert_file"
        )
    for name in ("max_header_fields", "max_header_depth", "max_header_bytes"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")


def _check_cache_settings(config: Config) -> None:
    servers: Any = config.cache_servers
    if isinstance(servers, str):
        # From the environment: RPC_CACHE_SERVERS="10.0.0.1:11211,10.0.0.2:11211".
        servers = servers.split(",")
    servers = tuple(str(server).strip() for server in servers if str(server).strip())
    object.__setattr__(config, "cache_servers", servers)
    if config.cache_timeout <= 0:
        raise _invalid("cache_timeout", "must be positive")
    if config.cache_max_item_bytes < 1024:
        raise _invalid("cache_max_item_bytes", "must be at least 1024")


_BOOLEANS = {
    **dict.fromkeys(("1", "true", "yes"), True),
    **dict.fromkeys(("0", "false", "no"), False),
}
_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
}
#: URL schemes of a broker: RabbitMQ's, and Kombu's in-memory one for tests.
BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "memory")


def _invalid(setting: str, problem: str) -> ConfigError:
    return ConfigError(f"{setting}: {problem}", setting=setting, problem=problem)


def _kind_of(field: dataclasses.Field[Any]) -> type | None:
    """The plain type a field holds (``int`` for ``int | None``), or None."""
    annotation = str(field.type).replace(" ", "")
    name = annotation.removesuffix("|None").removeprefix("None|")
    kinds: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
    return kinds.get(name)


def _check_types(config: Config) -> None:
    """Refuse a value of the wrong type by name, before any comparison trips on it.

    An int is a fine float (and becomes one); a bool is no number.
    """
    for field in dataclasses.fields(config):
        kind = _kind_of(field)
        value = getattr(config, field.name)
        if kind is None or (value is None and "None" in str(field.type)):
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, field.name, float(value))
            continue
        wrong_bool = isinstance(value, bool) and kind is not bool
        if wrong_bool or not isinstance(value, kind):
            raise _invalid(field.name, f"expected {_TYPE_NAMES[kind]}, got {value!r}")


def _check_broker_url(url: str) -> None:
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise _invalid("broker_url", f"not a URL: {urls.masked(url)!r}")
    if scheme.lower() not in BROKER_SCHEMES:
        raise _invalid(
            "broker_url",
            f"{scheme}:// is not a broker URL: use amqp:// (or amqps:// for TLS)",
        )


def _overlay(values: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Put ``layer`` over ``values``: a broker setting in it replaces both below."""
    if any(name in layer for name in _BROKER_SETTINGS):
        for name in _BROKER_SETTINGS:
            values.pop(name, None)
    values.update(layer)


def _partitions(value: object) -> dict[str, int]:
    """``{"orders": 3}``, from a mapping or from ``RPC_PARTITIONS="orders=3,b=2"``."""
    if isinstance(value, str):
        pairs: list[tuple[str, object]] = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, count = item.partition("=")
            if not sep:
                raise ConfigError(f"partitions: {item!r} is not SERVICE=COUNT")
            pairs.append((name.strip(), count.strip()))
        value = dict(pairs)
    if not isinstance(value, Mapping):
        raise ConfigError("partitions must map service names to partition counts")
    counts: dict[str, int] = {}
    for name, count in value.items():
        try:
            number = int(count)
        except (TypeError, ValueError):
            number = 0
        if not isinstance(name, str) or isinstance(count, bool) or number < 1:
            raise ConfigError(f"partitions: {name!r} needs a count of at least 1")
        counts[name] = number
    return counts


def _partition_indexes(value: object) -> tuple[int, ...]:
    """``(0, 2)``, from a list or from ``RPC_SERVE_PARTITIONS="0,2"``."""
    if isinstance(value, (str, int)):
        value = [part for part in str(value).split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError("serve_partitions must be a list of partition numbers")
    try:
        indexes = tuple(sorted({int(part) for part in value}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"serve_partitions: {exc}") from exc
    if any(index < 0 for index in indexes):
        raise ConfigError("serve_partitions must not be negative")
    return indexes
