"""Making sure a RabbitMQ broker is reachable: check it, start it, install it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from urllib.parse import urlsplit

from rpc.errors import BrokerError
from rpc.logs import status

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})
START_TIMEOUT = 90.0
#: The port ``rabbitmq-server`` listens on unless configured otherwise: the only
#: one a broker started here can be waited for on.
DEFAULT_PORT = 5672
#: Seconds between two "still waiting" lines while a broker starts.
PROGRESS_EVERY = 5.0


def address_of(url: str) -> tuple[str, int]:
    """Host and port of an ``amqp://`` URL."""
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 5672


def is_reachable(url: str, timeout: float = 2.0) -> bool:
    """True when something accepts TCP connections at the broker's address."""
    host, port = address_of(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


#: Plugins the framework uses: the consistent-hash exchange routes sharded calls.
PLUGINS = ("rabbitmq_consistent_hash_exchange",)


def ensure_broker(url: str, *, install: bool = True, log: bool = True) -> str:
    """Return a line saying how the broker at ``url`` became reachable, or raise.

    A remote broker is only checked. A local one is started with
    ``rabbitmq-server -detached`` when installed, and installed with apt-get first
    when absent and we run as root; then its :data:`PLUGINS` are enabled.
    """
    status = _ensure_reachable(url, install=install, log=log)
    host, _ = address_of(url)
    if host in LOOPBACK_HOSTS and shutil.which("rabbitmq-plugins") is not None:
        # Idempotent, and applied to the running node without a restart.
        _run(["rabbitmq-plugins", "enable", "--quiet", *PLUGINS], False)
        status += f"; enabled {', '.join(PLUGINS)}"
    return status


def _ensure_reachable(url: str, *, install: bool, log: bool) -> str:
    host, port = address_of(url)
    if is_reachable(url):
        return f"broker reachable at {host}:{port}"
    if host not in LOOPBACK_HOSTS:
        raise BrokerError(
            f"no broker answers at {host}:{port}; start it, or set RPC_BROKER_URL"
        )
    if port != DEFAULT_PORT:
        # rabbitmq-server would start on 5672 (or clash with the node running
        # there) and the wait for this port would never end: say so now.
        where = f"[{host}]" if ":" in host else host
        if is_reachable(f"amqp://{where}:{DEFAULT_PORT}/"):
            raise BrokerError(
                f"nothing listens on {host}:{port}, but a broker answers on "
                f"{host}:{DEFAULT_PORT}: fix the port in the broker URL"
            )
        raise BrokerError(
            f"nothing listens on {host}:{port}; rpc broker ensure starts a local "
            f"RabbitMQ on port {DEFAULT_PORT} only: start the broker meant to "
            "listen there, or fix the port in the broker URL"
        )
    if shutil.which("rabbitmq-server") is None:
        if not install or shutil.which("apt-get") is None or os.geteuid() != 0:
            raise BrokerError(
                "RabbitMQ is not installed: run `apt-get install rabbitmq-server` "
                "(or `docker compose up -d rabbitmq`), or set RPC_BROKER_URL"
            )
        _run(["apt-get", "update", "-q"], log)
        _run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], log)
    if _node_running():
        # A node is up but not listening yet (still booting): a second one would
        # only clash with it.
        status.info("a RabbitMQ node runs here; waiting for it to listen on %d", port)
    elif not is_reachable(url):
        status.info("starting RabbitMQ (rabbitmq-server -detached)...")
        _run(["rabbitmq-server", "-detached"], log)
    started = time.monotonic()
    deadline = started + START_TIMEOUT
    next_report = started + PROGRESS_EVERY
    while time.monotonic() < deadline:
        if is_reachable(url):
            return f"started RabbitMQ at {host}:{port}"
        if time.monotonic() >= next_report:
            next_report += PROGRESS_EVERY
            waited = time.monotonic() - started
            status.info(
                "waiting for RabbitMQ to listen on %s:%d (%.0f s of %.0f)...",
                host,
                port,
                waited,
                START_TIMEOUT,
            )
        time.sleep(0.5)
    raise BrokerError(f"RabbitMQ did not start listening on {host}:{port} in time")


def _node_running() -> bool:
    """Whether a RabbitMQ node named ``rabbit`` is registered with epmd here."""
    epmd = shutil.which("epmd")
    if epmd is None:
        return False
    try:
        names = subprocess.run(
            [epmd, "-names"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.startswith("name rabbit ") for line in names.splitlines())


def _run(command: list[str], log: bool) -> None:
    result = subprocess.run(
        command,
        stdout=None if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}"
        )
