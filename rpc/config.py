"""Settings: one dataclass, filled from flags, then environment, then a YAML file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rpc.errors import ConfigError

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
ENV_PREFIX = "RPC_"
CONFIG_FILE_ENV = "RPC_CONFIG"
QUEUE_TYPES = ("classic", "quorum")
#: ``copies``: how a worker publishes the copy it sends in place of a message.
COPY_MODES = ("confirmed", "unconfirmed")
#: ``reply_queue``: where a caller's replies come back.
REPLY_QUEUES = ("auto", "direct", "private")


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
        if self.copies not in COPY_MODES:
            raise ConfigError(f"copies must be one of {', '.join(COPY_MODES)}")
        if self.reply_queue not in REPLY_QUEUES:
            raise ConfigError(f"reply_queue must be one of {', '.join(REPLY_QUEUES)}")
        if isinstance(self.middleware, str):
            # From the environment: RPC_MIDDLEWARE="a.b:One,c.d:Two".
            paths = tuple(p.strip() for p in self.middleware.split(",") if p.strip())
            object.__setattr__(self, "middleware", paths)
        elif not isinstance(self.middleware, tuple):
            object.__setattr__(self, "middleware", tuple(self.middleware))
        if "://" not in self.broker_url:
            raise ConfigError(f"broker_url is not a URL: {self.broker_url!r}")

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(
            self, **{key: value for key, value in changes.items() if value is not None}
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
            values[field.name] = kind(raw) if kind in (int, float) else raw
        except ValueError as exc:
            name = ENV_PREFIX + field.name.upper()
            raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
    return values
