"""Fault injection for integration tests: a private RabbitMQ node and a TCP proxy.

``private_broker`` starts a RabbitMQ node of its own (own node name, ports, data and
log directories, no plugins) so a test may stop, kill and restart it while the
shared broker keeps serving every other test. ``tcp_proxy`` puts a loopback proxy
between a client and the shared broker that can cut every connection (RST) or
black-hole them (stop forwarding, send no FIN), which is how a network fails.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import kombu
import pytest

#: Where the RabbitMQ scripts live: the variable wins, then the Debian/Ubuntu
#: package's own directory (its /usr/sbin wrappers switch user and would lose our
#: environment), then whatever is on PATH.
SCRIPTS_ENV = "RPC_RABBITMQ_SCRIPTS"
DEBIAN_SCRIPTS = "/usr/lib/rabbitmq/bin"
#: Seconds a private node may take to boot or to stop on a busy two-core machine.
BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rabbitmq_script(name: str) -> str:
    configured = os.environ.get(SCRIPTS_ENV)
    for directory in (configured, DEBIAN_SCRIPTS):
        if directory and os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install RabbitMQ or set {SCRIPTS_ENV}")
    return found


class RabbitNode:
    """A RabbitMQ node that belongs to one test: start, stop, kill, restart.

    Data survives a restart (same mnesia directory), as on a real server, so durable
    queues and persistent messages can be checked across it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.dist_port = _free_port()
        self.node = f"rpc-test-{uuid.uuid4().hex[:10]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = directory / "console.log"
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            # The shared machine may be short of disk: never block publishers here.
            "disk_free_limit.absolute = 1\n"
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        home = str(self.directory)
        env.update(
            HOME=home,  # the Erlang cookie of this node and its rabbitmqctl
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(home, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(home, "log"),
            RABBITMQ_PID_FILE=os.path.join(home, "node.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(home, "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=os.path.join(home, "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(home, "rabbitmq-env.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(home, "advanced.config"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        env.pop("RABBITMQ_ALLOW_INPUT", None)
        return env

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot the node and wait until it accepts AMQP connections."""
        assert self._process is None, "node already running"
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(
                [_rabbitmq_script("rabbitmq-server")],
                env=self._env(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.node} exited at boot:\n{self.log_tail()}")
            try:
                with kombu.Connection(self.url, connect_timeout=2) as connection:
                    connection.connect()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.node} not ready after {timeout}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.25)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``); kill it if that fails."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            subprocess.run(
                [_rabbitmq_script("rabbitmqctl"), "-n", self.node, "stop"],
                env=self._env(),
                cwd=self.directory,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_process(process)

    def kill(self) -> None:
        """Crash the node: SIGKILL the Erlang VM, as a power cut would."""
        process, self._process = self._process, None
        if process is not None:
            self._kill_process(process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _kill_process(self, process: subprocess.Popen[bytes]) -> None:
        # The VM runs as a child of the start script; its pid is in the pid file.
        with contextlib.suppress(OSError, ValueError):
            vm = int((self.directory / "node.pid").read_text().strip())
            os.kill(vm, signal.SIGKILL)
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(
                self._log.read_text(errors="replace").splitlines()[-lines:]
            )
        return ""


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this test's own, on free loopback ports; stopped after."""
    node = RabbitNode(tmp_path_factory.mktemp("rabbit"))
    node.start()
    try:
        yield node
    finally:
        try:
            if node.running:
                node.stop()
        finally:
            node.kill()


# -- the TCP proxy ---------------------------------------------------------------------

#: Bytes buffered per direction before the proxy stops reading from the sender.
_BUFFER_LIMIT = 1 << 20


class _Pair:
    """One proxied connection: the client's socket and ours to the server."""

    def __init__(self, client: socket.socket, server: socket.socket | None) -> None:
        self.client = client
        self.server = server
        self.outbox: dict[socket.socket, bytearray] = {client: bytearray()}
        if server is not None:
            self.outbox[server] = bytearray()

    def other(self, sock: socket.socket) -> socket.socket | None:
        return self.server if sock is self.client else self.client

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.server) if s is not None]


class TcpProxy:
    """A loopback TCP proxy to ``target`` that can simulate network faults.

    ``cut()`` resets every connection (both ends see RST at once); ``blackhole()``
    stops forwarding in both directions and sends nothing, not even FIN, so only a
    timeout or a heartbeat can tell the connection is dead; ``blackhole_after(n)``
    does so once ``n`` more bytes went to the clients (a link that dies in the middle
    of a frame); ``restore()`` resets the black-holed connections and forwards new
    ones again.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._frozen = False
        #: Bytes still to forward to the clients before going silent; None: no limit.
        self._budget: int | None = None
        self._commands: list[tuple[Callable[[], None], threading.Event]] = []
        self._commands_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self.accepted = 0

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def url_for(self, broker_url: str) -> str:
        """``broker_url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(broker_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = (
            f"{credentials}@127.0.0.1:{self.port}"
            if credentials
            else (f"127.0.0.1:{self.port}")
        )
        return urlunsplit(parts._replace(netloc=netloc))

    # -- faults, applied by the proxy's thread ---------------------------------------

    def cut(self) -> None:
        """Reset every open connection; new ones are accepted and forwarded."""
        self._do(self._reset_all)

    def blackhole(self) -> None:
        """Stop forwarding and closing: open connections and new ones go silent."""
        self._do(lambda: setattr(self, "_frozen", True))

    def blackhole_after(self, count: int) -> None:
        """Forward ``count`` more bytes to the clients, then go silent (blackhole)."""
        self._do(lambda: setattr(self, "_budget", count))

    def restore(self) -> None:
        """Reset the silent connections and forward new ones again."""

        def restore() -> None:
            self._reset_all()
            self._frozen = False
            self._budget = None

        self._do(restore)

    @property
    def connections(self) -> int:
        return len(self._pairs)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self._reset_all()
        self._listener.close()

    def _do(self, command: Callable[[], None]) -> None:
        done = threading.Event()
        with self._commands_lock:
            self._commands.append((command, done))
        if not done.wait(10):
            raise RuntimeError("the TCP proxy did not apply a command within 10 s")

    # -- the proxy's thread -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._commands_lock:
                commands, self._commands = self._commands, []
            for command, done in commands:
                command()
                done.set()
            self._step(0.05)

    def _step(self, timeout: float) -> None:
        readers: list[socket.socket] = [self._listener]
        writers: list[socket.socket] = []
        if not self._frozen:
            for pair in self._pairs:
                for sock in pair.sockets():
                    other = pair.other(sock)
                    if other is not None and len(pair.outbox[other]) < _BUFFER_LIMIT:
                        readers.append(sock)
                    if pair.outbox[sock]:
                        writers.append(sock)
        readable, writable, _ = select.select(readers, writers, [], timeout)
        owner = {s: p for p in self._pairs for s in p.sockets()}
        for sock in writable:
            pair = owner.get(sock)
            if pair is None:
                continue
            limited = sock is pair.client and self._budget is not None
            data = pair.outbox[sock]
            if limited:
                data = data[: self._budget]
            try:
                sent = sock.send(data)
                del pair.outbox[sock][:sent]
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(pair, reset=True)
                continue
            if limited and self._budget is not None:
                self._budget -= sent
                if self._budget <= 0:
                    self._budget = None
                    self._frozen = True
                    return
        for sock in readable:
            if sock is self._listener:
                self._accept()
                continue
            pair = owner.get(sock)
            if pair is None or pair not in self._pairs:
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                self._close(pair, reset=True)
                continue
            other = pair.other(sock)
            if not data or other is None:
                # An orderly close on one side: pass it on once the other is flushed.
                self._close(pair, reset=False)
                continue
            pair.outbox[other] += data

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        server: socket.socket | None = None
        if not self._frozen:
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                return
            server.setblocking(False)
        client.setblocking(False)
        # A frozen connection is accepted (the handshake hangs) but never forwarded.
        self._pairs.append(_Pair(client, server))

    def _reset_all(self) -> None:
        for pair in list(self._pairs):
            self._close(pair, reset=True)

    def _close(self, pair: _Pair, *, reset: bool) -> None:
        if pair in self._pairs:
            self._pairs.remove(pair)
        for sock in pair.sockets():
            if not reset and pair.outbox.get(sock):
                with contextlib.suppress(OSError):
                    sock.setblocking(True)
                    sock.settimeout(1)
                    sock.sendall(pair.outbox[sock])
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


def _reset(sock: socket.socket) -> None:
    # Linger 0: close() sends RST, the peer sees "connection reset" at once.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@pytest.fixture
def tcp_proxy(base_broker_url: str) -> Iterator[TcpProxy]:
    """A fault-injecting proxy in front of the shared broker (use ``url_for``)."""
    parts = urlsplit(base_broker_url)
    proxy = TcpProxy((parts.hostname or "localhost", parts.port or 5672)).start()
    try:
        yield proxy
    finally:
        proxy.stop()
