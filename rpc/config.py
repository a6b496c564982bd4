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
    #: Free-form settings for services, read through the ``Config`` dependency.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
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
            raise ConfigError(f"broker_url is not a URL: {self.broker_url!r}")
        self._check_observability()

    def _check_observability(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port must be between 0 and 65535")
        if isinstance(self.tracing, str):
            # From the environment: RPC_TRACING=1, true, yes (or 0, false, no).
            flag = self.tracing.strip().lower()
            if flag not in _FLAGS:
                raise ConfigError(
                    f"tracing must be true or false, not {self.tracing!r}"
                )
            object.__setattr__(self, "tracing", _FLAGS[flag])
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        if self.slow_call_seconds < 0:
            raise ConfigError("slow_call_seconds must not be negative")

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
            values[field.name] = kind(raw) if kind in (int, float) else raw
        except ValueError as exc:
            name = ENV_PREFIX + field.name.upper()
            raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
    return values
