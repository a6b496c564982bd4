"""Settings: one dataclass, filled from flags, then environment, then a YAML file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rpc.credentials import masked_url
from rpc.errors import ConfigError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
ENV_PREFIX = "RPC_"
CONFIG_FILE_ENV = "RPC_CONFIG"
QUEUE_TYPES = ("classic", "quorum")


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
    #: Free-form settings for services, read through the ``Config`` dependency.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Memcached servers of the result cache (``host:port``); none: nothing cached.
    cache_servers: tuple[str, ...] = ()
    #: Seconds a cache server may take to answer before it counts as down.
    cache_timeout: float = 0.25
    #: Largest item the cache servers keep (memcached ``-I``), key and value.
    cache_max_item_bytes: int = 1024 * 1024

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
        if self.default_timeout <= 0:
            raise ConfigError("default_timeout must be positive")
        if self.max_workers < 1:
            raise ConfigError("max_workers must be at least 1")
        if self.max_async < 1:
            raise ConfigError("max_async must be at least 1")
        if self.heartbeat < 0:
            raise ConfigError("heartbeat must not be negative")
        if self.max_message_bytes < 1024:
            raise ConfigError("max_message_bytes must be at least 1024")
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigError(f"queue_type must be one of {', '.join(QUEUE_TYPES)}")
        if self.delivery_limit < 1:
            raise ConfigError("delivery_limit must be at least 1")
        if self.retry_delay < 0:
            raise ConfigError("retry_delay must not be negative")
        if self.retry_max_delay < 0:
            raise ConfigError("retry_max_delay must not be negative")
        if isinstance(self.middleware, str):
            # From the environment: RPC_MIDDLEWARE="a.b:One,c.d:Two".
            paths = tuple(p.strip() for p in self.middleware.split(",") if p.strip())
            object.__setattr__(self, "middleware", paths)
        elif not isinstance(self.middleware, tuple):
            object.__setattr__(self, "middleware", tuple(self.middleware))
        if "://" not in self.broker_url:
            # Not echoed: what was meant as a URL may hold a password.
            raise ConfigError(
                "broker_url is not a URL: expected amqp://, amqps:// or memory://"
            )
        _check_security(self)
        _check_cache_settings(self)

    def __repr__(self) -> str:
        # The generated repr would print the broker URL's password.
        shown = {field.name: getattr(self, field.name) for field in _FIELDS}
        shown["broker_url"] = masked_url(self.broker_url)
        fields = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"Config({fields})"

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(
            self, **{key: value for key, value in changes.items() if value is not None}
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> Config:
        """Build settings: flags win over ``RPC_*`` variables, which win over the file.

        The YAML file is ``path``, else the file named by ``RPC_CONFIG``, else none.
        """
        environ = os.environ if environ is None else environ
        path = path or environ.get(CONFIG_FILE_ENV)
        values: dict[str, Any] = dict(_read_file(Path(path))) if path else {}
        values.update(_read_environ(environ))
        values.update({key: value for key, value in flags.items() if value is not None})
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            return cls(**values)
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
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Config):
        raw = environ.get(ENV_PREFIX + field.name.upper())
        if raw is None or field.name == "extra":
            continue
        kind = type(getattr(Config, field.name, ""))
        try:
            if kind is bool:
                values[field.name] = _boolean(raw)
                continue
            values[field.name] = kind(raw) if kind in (int, float) else raw
        except ValueError as exc:
            name = ENV_PREFIX + field.name.upper()
            raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
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
        raise ConfigError("cache_timeout must be positive")
    if config.cache_max_item_bytes < 1024:
        raise ConfigError("cache_max_item_bytes must be at least 1024")
