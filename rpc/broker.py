"""Making sure a RabbitMQ broker is reachable: check it, start it, install it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from urllib.parse import urlsplit

from rpc.errors import BrokerError

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", ""})
START_TIMEOUT = 90.0


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
    if shutil.which("rabbitmq-server") is None:
        if not install or shutil.which("apt-get") is None or os.geteuid() != 0:
            raise BrokerError(
                "RabbitMQ is not installed: run `apt-get install rabbitmq-server` "
                "(or `docker compose up -d rabbitmq`), or set RPC_BROKER_URL"
            )
        _run(["apt-get", "update", "-q"], log)
        _run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], log)
    if not is_reachable(url):
        _run(["rabbitmq-server", "-detached"], log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if is_reachable(url):
            return f"started RabbitMQ at {host}:{port}"
        time.sleep(0.5)
    raise BrokerError(f"RabbitMQ did not start listening on {host}:{port} in time")


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
