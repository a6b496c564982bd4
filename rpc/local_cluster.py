"""A private RabbitMQ cluster on this machine, from the installed server, no Docker.

For trying a service against a cluster and for fault tests: ``rpc broker cluster
--nodes 3`` runs one in the foreground, and tests start one per session. Each node
has its own name, ports, configuration, data and logs under one directory, and all
share one Erlang cookie there, so the machine's own broker (``rabbit@localhost`` on
5672) is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from rpc.broker import PLUGINS
from rpc.errors import BrokerError

#: Where the RabbitMQ scripts live: this variable wins, then the Debian package's
#: own directory (its /usr/sbin wrappers switch user and would lose our
#: environment), then whatever is on PATH.
SCRIPTS_ENV = "RPC_RABBITMQ_SCRIPTS"
DEBIAN_SCRIPTS = "/usr/lib/rabbitmq/bin"
#: Seconds a node may take to boot, or a command to answer, on a busy small machine.
BOOT_TIMEOUT = 180.0
COMMAND_TIMEOUT = 120.0
#: What docs/cluster.md asks an operator to set on every node: a frozen or cut-off
#: node is declared down after about 10 s (not 60), and a node that finds itself
#: in the minority of a partition pauses rather than serve a split cluster.
OPERATOR_SETTINGS = (
    "net_ticktime = 10",
    "cluster_partition_handling = pause_minority",
)


def rabbitmq_script(name: str) -> str:
    """The path of ``rabbitmq-server``, ``rabbitmqctl`` or another script."""
    for directory in (os.environ.get(SCRIPTS_ENV), DEBIAN_SCRIPTS):
        if directory and os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    found = shutil.which(name)
    if found is None:
        raise BrokerError(
            f"{name} not found: install RabbitMQ (`rpc broker ensure` does) or set "
            f"{SCRIPTS_ENV}"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass(frozen=True)
class NodeTls:
    """A TLS listener for the nodes of a :class:`LocalCluster`: PEM files.

    ``ca_file`` signs the clients' certificates the node accepts (it asks each
    client for one, and checks it when given); with ``certificate_login``, a client
    may log in as the common name of its certificate (SASL EXTERNAL, through
    ``rabbitmq_auth_mechanism_ssl``).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    certificate_login: bool = False

    def config_lines(self, port: int) -> str:
        """The rabbitmq.conf lines of the listener on ``port``."""
        lines = [
            f"listeners.ssl.default = 127.0.0.1:{port}",
            f"ssl_options.cacertfile = {self.ca_file}",
            f"ssl_options.certfile = {self.cert_file}",
            f"ssl_options.keyfile = {self.key_file}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
        if self.certificate_login:
            lines += [
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
            ]
        return "".join(line + "\n" for line in lines)


#: The plugin behind EXTERNAL logins with a client certificate.
CERTIFICATE_LOGIN_PLUGIN = "rabbitmq_auth_mechanism_ssl"


@dataclasses.dataclass
class ClusterNode:
    """One node of a :class:`LocalCluster`."""

    index: int
    name: str
    port: int
    dist_port: int
    directory: Path
    environment: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    #: The TLS listener's port, when the cluster has one.
    tls_port: int | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def tls_url(self) -> str:
        """``amqps://`` to the TLS listener, by the name its certificate carries."""
        if self.tls_port is None:
            raise ValueError("this node has no TLS listener")
        return f"amqps://guest:guest@127.0.0.1:{self.tls_port}//"

    @property
    def pid(self) -> int | None:
        """The Erlang VM's process id (the start script is its parent)."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.directory / "rabbit.pid").read_text().strip())
        return None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ctl(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run ``rabbitmqctl -n <node> ARGS``; its output, or BrokerError."""
        return _run(
            [rabbitmq_script("rabbitmqctl"), "-n", self.name, *args],
            self.environment,
            timeout,
        )

    def start(self) -> None:
        """Boot the node (in the background); :meth:`wait` waits for it."""
        if self.running:
            return
        log = (self.directory / "console.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                [rabbitmq_script("rabbitmq-server")],
                env=self.environment,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Block until the node runs its RabbitMQ application."""
        self.ctl(
            "wait",
            "--timeout",
            str(int(timeout)),
            str(self.directory / "rabbit.pid"),
            timeout=timeout + 10,
        )

    def kill(self) -> None:
        """Crash the node (SIGKILL of its VM), as a power cut would."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)

    def freeze(self) -> None:
        """Stop the VM in its tracks (SIGSTOP): alive to TCP, silent to everything."""
        pid = self.pid
        if pid is not None and self.running:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        pid = self.pid
        if pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the node cleanly, or kill it when it does not answer."""
        if self.running:
            with contextlib.suppress(BrokerError):
                self.ctl("stop", timeout=60)
        process, self.process = self.process, None
        if process is not None:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process = process
                self.kill()


class LocalCluster:
    """``nodes`` RabbitMQ nodes on loopback, joined into one cluster.

    Ports are free ones unless ``base_port`` is given (node *i* then listens on
    ``base_port + i``). Node 1 is the seed the others join; every node enables
    the plugins the framework uses. ``settings`` are more ``rabbitmq.conf`` lines
    for every node, such as :data:`OPERATOR_SETTINGS`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        nodes: int = 3,
        base_port: int | None = None,
        name: str | None = None,
        settings: Sequence[str] = (),
        tls: NodeTls | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.directory = directory
        self.tls = tls
        self.name = name or f"rpc-{uuid.uuid4().hex[:8]}"
        self.settings = tuple(settings)
        directory.mkdir(parents=True, exist_ok=True)
        cookie = directory / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(uuid.uuid4().hex.upper())
            cookie.chmod(0o400)
        (directory / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        self.nodes: list[ClusterNode] = [
            self._node(index, base_port) for index in range(1, nodes + 1)
        ]

    def _node(self, index: int, base_port: int | None) -> ClusterNode:
        home = self.directory / f"n{index}"
        home.mkdir(exist_ok=True)
        port = base_port + index if base_port is not None else free_port()
        dist_port = free_port()
        tls_port = free_port() if self.tls is not None else None
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{port}\n"
            f"cluster_name = {self.name}\n"
            "loopback_users.guest = true\n"
            # A small shared machine may be short of disk: never block publishers.
            "disk_free_limit.absolute = 1\n"
            + "".join(f"{line}\n" for line in self.settings)
            + (self.tls.config_lines(tls_port) if self.tls and tls_port else "")
        )
        plugins = list(PLUGINS)
        if self.tls is not None and self.tls.certificate_login:
            plugins.append(CERTIFICATE_LOGIN_PLUGIN)
        (home / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        node = f"{self.name}-{index}@localhost"
        environment = {
            **os.environ,
            "HOME": str(self.directory),  # the shared Erlang cookie
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        environment.pop("RABBITMQ_ALLOW_INPUT", None)
        return ClusterNode(
            index, node, port, dist_port, home, environment, tls_port=tls_port
        )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def broker_url(self) -> str:
        """Every node's URL, ``;``-separated, as ``--broker`` takes a list."""
        return ";".join(self.urls)

    def node(self, index: int) -> ClusterNode:
        return self.nodes[index - 1]

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot every node and join them to node 1; stop them all on failure."""
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                node.wait(timeout)
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("reset")
                node.ctl("join_cluster", seed.name)
                node.ctl("start_app")
            self.wait_running(timeout)
        except BaseException:
            self.stop()
            raise

    def running_nodes(self) -> list[str]:
        """Names of the nodes the cluster sees running, asked of any live node."""
        for node in self.nodes:
            if not node.running:
                continue
            with contextlib.suppress(BrokerError):
                status = node.ctl("cluster_status", "--formatter", "json", timeout=30)
                return list(json.loads(status).get("running_nodes", []))
        return []

    def wait_running(
        self, timeout: float = BOOT_TIMEOUT, *, nodes: Sequence[int] = ()
    ) -> None:
        """Block until the given nodes (all by default) run as one cluster."""
        wanted = {self.node(i).name for i in nodes} or {n.name for n in self.nodes}
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.running_nodes()):
            if time.monotonic() > deadline:
                raise BrokerError(f"cluster {self.name}: nodes not running in time")
            time.sleep(0.5)

    def restart(self, index: int, timeout: float = BOOT_TIMEOUT) -> None:
        """Start a node that was killed or stopped, and wait until it has rejoined."""
        node = self.node(index)
        node.start()
        node.wait(timeout)
        self.wait_running(timeout)

    def stop(self) -> None:
        """Stop every node; whatever does not stop is killed. Data stays on disk."""
        failure: BaseException | None = None
        for node in reversed(self.nodes):
            try:
                node.thaw()
                node.stop()
            except BaseException as exc:
                node.kill()  # and go on: no node may outlive its cluster
                failure = failure or exc
        if failure is not None:
            raise failure


def _run(command: list[str], environment: dict[str, str], timeout: float) -> str:
    try:
        result = subprocess.run(
            command,
            env=environment,
            capture_output=True,
            timeout=timeout,
            check=False,
            text=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"`{' '.join(command[1:])}` took over {timeout}s") from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        raise BrokerError(f"`{' '.join(command[1:])}` failed: {detail}")
    return result.stdout
