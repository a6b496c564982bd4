"""Memcached processes: make sure the server is installed, and run private ones.

``rpc cache ensure`` installs Memcached with apt-get when it is absent and we are
root, as ``rpc broker ensure`` does for RabbitMQ, and starts the configured
loopback servers that do not answer. :class:`LocalMemcached` runs servers of its
own on free loopback ports, for tests and benchmarks: nobody else's are touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence

from rpc.errors import CacheUnavailableError, ConfigError

DEFAULT_PORT = 11211
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
START_TIMEOUT = 10.0


def parse_server(address: str) -> tuple[str, int]:
    """``host:port`` (or ``host``, or ``[v6]:port``) as a (host, port) pair."""
    text = address.strip()
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(address, rest.removeprefix(":"))
    elif text.count(":") == 1:
        host, _, raw = text.partition(":")
        port = _port(address, raw)
    if not host:
        raise ConfigError(f"cache_servers: no host in {address!r}")
    return host, port


def _port(address: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"cache_servers: bad port in {address!r}")
    return port


def memcached_binary() -> str | None:
    """Where the ``memcached`` program is, if it is installed."""
    return shutil.which("memcached") or next(
        (
            path
            for path in ("/usr/bin/memcached", "/usr/sbin/memcached")
            if os.access(path, os.X_OK)
        ),
        None,
    )


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Memcached server at ``host:port`` answers ``version``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"version\r\n")
            return sock.recv(64).startswith(b"VERSION ")
    except OSError:
        return False


def ensure_memcached(
    servers: Sequence[tuple[str, int]] = (), *, install: bool = True, log: bool = True
) -> list[str]:
    """Lines saying how Memcached became available; raise CacheUnavailableError if not.

    Installs the server when it is absent (apt-get, as root), then starts each
    loopback server of ``servers`` that does not answer. Remote ones are only
    checked: the cache works without them, but say so.
    """
    lines: list[str] = []
    binary = memcached_binary()
    if binary is None:
        if not install or shutil.which("apt-get") is None or os.geteuid() != 0:
            raise CacheUnavailableError(
                "Memcached is not installed: run `apt-get install memcached` "
                "(or `docker compose up -d memcached-1 memcached-2`)"
            )
        _run(["apt-get", "update", "-q"], log)
        _run(["apt-get", "install", "-y", "-q", "memcached"], log)
        binary = memcached_binary()
        if binary is None:
            raise CacheUnavailableError(
                "apt-get installed memcached, but it is not on PATH"
            )
        lines.append(f"installed Memcached at {binary}")
    else:
        lines.append(f"Memcached installed at {binary}")
    for host, port in servers:
        if answers(host, port):
            lines.append(f"memcached answers at {host}:{port}")
        elif host in LOOPBACK_HOSTS:
            _run(
                [binary, *_user_flags(), "-d", "-l", host, "-p", str(port), "-U", "0"],
                log,
            )
            _wait_until_answering(host, port)
            lines.append(f"started memcached at {host}:{port}")
        else:
            lines.append(f"warning: no memcached answers at {host}:{port}")
    return lines


class LocalMemcached:
    """``count`` private memcached processes on free loopback ports.

    ``with LocalMemcached(3) as servers:`` gives ``servers.addresses``
    (``127.0.0.1:PORT`` each, for ``cache_servers``); they are stopped after.
    ``kill(i)`` and ``start_one(i)`` take one down and bring it back (empty, as a
    restarted Memcached is) on the same port.
    """

    def __init__(
        self, count: int = 3, *, memory_mb: int = 64, max_item: str = "1m"
    ) -> None:
        binary = memcached_binary()
        if binary is None:
            raise CacheUnavailableError(
                "memcached is not installed: run `rpc cache ensure`"
            )
        self.binary = binary
        self.memory_mb = memory_mb
        self.max_item = max_item
        self.ports = [_free_port() for _ in range(count)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def start(self) -> LocalMemcached:
        for index in range(len(self.ports)):
            self.start_one(index)
        return self

    def start_one(self, index: int) -> None:
        """Start server ``index`` (again) on its port and wait until it answers."""
        port = self.ports[index]
        process = subprocess.Popen(
            [
                self.binary,
                *_user_flags(),
                "-l",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "0",  # no UDP
                "-m",
                str(self.memory_mb),
                "-I",
                self.max_item,
                "-t",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes[index] = process
        try:
            _wait_until_answering("127.0.0.1", port, process)
        except CacheUnavailableError:
            self._end(index)
            raise

    def kill(self, index: int) -> None:
        """SIGKILL server ``index``: what it held is gone, its port refuses."""
        process = self.processes[index]
        if process is not None:
            process.kill()
            process.wait(timeout=10)
        self.processes[index] = None

    def stop(self) -> None:
        for index in range(len(self.processes)):
            self._end(index)

    def _end(self, index: int) -> None:
        process = self.processes[index]
        self.processes[index] = None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> LocalMemcached:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _user_flags() -> list[str]:
    # memcached refuses to run as root unless told which user to become.
    return ["-u", "nobody"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_answering(
    host: str, port: int, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if answers(host, port, timeout=0.5):
            return
        if process is not None and process.poll() is not None:
            raise CacheUnavailableError(
                f"memcached on port {port} exited with status {process.returncode}"
            )
        time.sleep(0.02)
    raise CacheUnavailableError(f"memcached did not answer at {host}:{port} in time")


def _run(command: list[str], log: bool) -> None:
    try:
        result = subprocess.run(
            command,
            stdout=None if log else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
    except FileNotFoundError as exc:
        raise CacheUnavailableError(f"`{command[0]}` not found") from exc
    if result.returncode != 0:
        raise CacheUnavailableError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}"
        )
