"""The observability flags of ``rpc run`` and ``rpc gateway``, and a supervisor
that serves its children's metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from rpc.config import LOG_FORMATS, Config
from rpc.observability.logs import configure_log_format
from rpc.service import ServiceDefinition
from rpc.supervisor import Supervisor

__all__ = ["configure_log_format", "observability_options", "supervise"]

_Command = TypeVar("_Command", bound=Callable[..., Any])


def observability_options(command: _Command) -> _Command:
    """``--metrics-port``, ``--metrics-host``, ``--log-format`` and ``--tracing``.

    Each defaults to None, so the environment and the config file decide unless a
    flag is given.
    """
    options = [
        click.option(
            "--metrics-port",
            type=click.IntRange(1, 65535),
            help="Serve Prometheus /metrics on this port [env: RPC_METRICS_PORT].",
        ),
        click.option(
            "--metrics-host",
            help="Address /metrics listens on (default 127.0.0.1).",
        ),
        click.option(
            "--log-format",
            type=click.Choice(LOG_FORMATS),
            help="Log lines for people (text) or one JSON object each (json).",
        ),
        click.option(
            "--tracing/--no-tracing",
            default=None,
            help="OpenTelemetry spans for calls, casts and events (rpc[otel]).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def supervise(services: Sequence[type], config: Config, processes: int) -> int:
    """Run ``processes`` workers under a supervisor; the exit status.

    With ``metrics_port``, the supervisor serves one ``/metrics`` for all of them.
    """
    if not config.metrics_port:
        return Supervisor(services, config, processes=processes).run()
    # Imported only now: prometheus-client is an extra.
    from rpc.observability.exporter import SupervisorMetrics

    exported = SupervisorMetrics(
        config, [ServiceDefinition.from_class(cls) for cls in services]
    )
    try:
        return Supervisor(
            services, config, processes=processes, on_child_exit=exported.child_exited
        ).run()
    finally:
        exported.close()
