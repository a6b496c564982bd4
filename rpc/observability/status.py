"""``rpc status``: what runs now, by service, from the workers' own answers.

Every worker answers a discovery request with its services and live counters
(host:pid, version, uptime, in flight, served, errors); queue and dead-letter
depths come from passive declares. Nothing is kept between two runs: ``--watch``
asks again every second and shows rates from the last two answers.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import click
import orjson

from rpc import protocol
from rpc.config import Config
from rpc.discovery import DISCOVERY_QUIET, DISCOVERY_WAIT
from rpc.errors import BrokerError, RpcError
from rpc.observability.queues import QueueState, read_queues
from rpc.proxy import ClusterProxy

#: Longest wait to reach the broker: a status that hangs tells nobody anything.
CONNECT_TIMEOUT = 5.0
#: Exit status when the broker cannot be reached.
BROKER_DOWN = 2
NO_WORKERS = "(no workers running)"
_CLEAR = "\x1b[H\x1b[J"


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    """One worker process, as it described itself."""

    worker: str
    host: str
    pid: int | None
    version: str
    uptime: float
    in_flight: int
    served: int
    errors: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.pid}" if self.pid is not None else self.worker


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """One service: its methods, its workers, its queue and dead-letter queue."""

    service: str
    methods: list[str]
    workers: list[WorkerStatus]
    queue: QueueState | None
    dead_letters: QueueState | None


def _number(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, int | float) else default


def worker_status(reply: Mapping[str, Any]) -> WorkerStatus:
    """A worker's answer as a status row; fields it lacks read as unknown."""
    worker = str(reply.get("worker", "?"))
    live = reply.get("live")
    live = live if isinstance(live, dict) else {}
    host, _, rest = worker.partition(":")
    pid = live.get("pid")
    if not isinstance(pid, int):
        head = rest.partition(":")[0]
        pid = int(head) if head.isdigit() else None
    return WorkerStatus(
        worker=worker,
        host=str(live.get("host") or host),
        pid=pid,
        version=str(live.get("version", "?")),
        uptime=float(live.get("uptime", 0) or 0),
        in_flight=_number(live.get("in_flight")),
        served=_number(live.get("served")),
        errors=_number(live.get("errors")),
    )


def by_service(
    replies: Sequence[Mapping[str, Any]], only: str | None = None
) -> dict[str, tuple[set[str], list[WorkerStatus]]]:
    """Methods and workers of each service the answers name; ``only`` one of them."""
    found: dict[str, tuple[set[str], list[WorkerStatus]]] = {}
    for reply in replies:
        services = reply.get("services")
        if not isinstance(services, list):
            continue
        row = worker_status(reply)
        for described in services:
            if not isinstance(described, dict):
                continue
            name = described.get("service")
            if not isinstance(name, str) or (only is not None and name != only):
                continue
            methods, workers = found.setdefault(name, (set(), []))
            listed = described.get("methods")
            if isinstance(listed, dict):
                methods.update(str(method) for method in listed)
            workers.append(row)
    return found


def gather(
    config: Config,
    service: str | None = None,
    *,
    wait: float = DISCOVERY_WAIT,
    quiet: float = DISCOVERY_QUIET,
) -> list[ServiceStatus]:
    """Ask the running workers, then read their queues.

    Raises:
        BrokerError: the broker cannot be reached.
    """
    config = config.replace(
        connect_timeout=min(config.connect_timeout, CONNECT_TIMEOUT)
    )
    with ClusterProxy(config=config, name="status") as cluster:
        replies = cluster.workers(wait=wait, quiet=quiet)
    found = by_service(replies, service)
    if service is not None and service not in found:
        found[service] = (set(), [])
    queues: list[str] = []
    for name in found:
        queues += [protocol.service_queue(name), protocol.dead_letter_queue(name)]
    states = read_queues(config, queues)
    return [
        ServiceStatus(
            service=name,
            methods=sorted(methods),
            workers=sorted(workers, key=lambda w: w.address),
            queue=states.get(protocol.service_queue(name)),
            dead_letters=states.get(protocol.dead_letter_queue(name)),
        )
        for name, (methods, workers) in sorted(found.items())
    ]


def as_json(services: Sequence[ServiceStatus]) -> dict[str, Any]:
    """The status as ``--json`` prints it."""

    def queue(name: str, state: QueueState | None) -> dict[str, Any] | None:
        if state is None:
            return None
        return {"name": name, "messages": state.messages, "consumers": state.consumers}

    return {
        "services": [
            {
                "service": status.service,
                "methods": status.methods,
                "queue": queue(protocol.service_queue(status.service), status.queue),
                "dead_letters": queue(
                    protocol.dead_letter_queue(status.service), status.dead_letters
                ),
                "workers": [
                    {**dataclasses.asdict(worker), "address": worker.address}
                    for worker in status.workers
                ],
            }
            for status in services
        ]
    }


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _depth(state: QueueState | None, what: str) -> str:
    if state is None:
        return f"{what}: none"
    return f"{what}: {state.messages} ready, {state.consumers} consumers"


Rates = Mapping[str, float]


def render(services: Sequence[ServiceStatus], rates: Rates | None = None) -> str:
    """The status table; ``rates`` (calls/s by worker id) adds a column."""
    header = ["WORKER", "VERSION", "UPTIME", "IN FLIGHT", "SERVED", "ERRORS"]
    if rates is not None:
        header.append("CALLS/S")
    if not services:
        return "\n".join(["  ".join(header), NO_WORKERS])
    lines: list[str] = []
    for status in services:
        dead = status.dead_letters.messages if status.dead_letters else 0
        lines.append(
            f"{status.service}  ({_depth(status.queue, 'queue')}; dead letters: {dead})"
        )
        lines.append(f"  methods: {', '.join(status.methods) or '-'}")
        rows = [header]
        for worker in status.workers:
            row = [
                worker.address,
                worker.version,
                _uptime(worker.uptime),
                str(worker.in_flight),
                str(worker.served),
                str(worker.errors),
            ]
            if rates is not None:
                row.append(f"{rates.get(worker.worker, 0.0):.1f}")
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append(
                "  "
                + "  ".join(
                    c.ljust(w) for c, w in zip(row, widths, strict=True)
                ).rstrip()
            )
        if not status.workers:
            lines.append(f"  {NO_WORKERS}")
    return "\n".join(lines)


def served_rates(
    before: Sequence[ServiceStatus], after: Sequence[ServiceStatus], seconds: float
) -> dict[str, float]:
    """Calls per second of each worker between two looks ``seconds`` apart."""
    earlier = {w.worker: w.served for s in before for w in s.workers}
    rates: dict[str, float] = {}
    for status in after:
        for worker in status.workers:
            if worker.worker in earlier and seconds > 0:
                rates[worker.worker] = (
                    max(worker.served - earlier[worker.worker], 0) / seconds
                )
    return rates


@click.command("status")
@click.argument("service", required=False)
@click.option(
    "--broker", envvar="RPC_BROKER_URL", help="AMQP URL [env: RPC_BROKER_URL]"
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="RPC_CONFIG",
    help="YAML settings file [env: RPC_CONFIG]",
)
@click.option("--json", "as_json_flag", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl+C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="With --watch, stop after this many refreshes.",
)
def status_command(
    service: str | None,
    broker: str | None,
    config_file: str | None,
    as_json_flag: bool,
    watch: bool,
    interval: float,
    count: int | None,
) -> None:
    """Show what runs now: services, workers, queue depths (SERVICE: just one)."""
    try:
        config = Config.load(config_file, broker_url=broker)
    except RpcError as exc:
        raise click.UsageError(str(exc)) from exc
    if service is not None:
        try:
            protocol.check_service_name(service)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    previous: list[ServiceStatus] | None = None
    looked_at = 0.0
    shown = 0
    try:
        while True:
            try:
                current = gather(config, service)
            except BrokerError as exc:
                host = config.broker_url.rsplit("@", 1)[-1]
                click.echo(f"error: cannot reach the broker at {host}: {exc}", err=True)
                sys.exit(BROKER_DOWN)
            now = time.monotonic()
            if as_json_flag:
                click.echo(orjson.dumps(as_json(current)).decode())
            else:
                rates = None
                if watch:
                    rates = (
                        served_rates(previous, current, now - looked_at)
                        if previous is not None
                        else {}
                    )
                    if sys.stdout.isatty():
                        click.echo(_CLEAR, nl=False)
                click.echo(render(current, rates))
            shown += 1
            if not watch or (count is not None and shown >= count):
                return
            previous, looked_at = current, now
            time.sleep(interval)
    except KeyboardInterrupt:
        return
