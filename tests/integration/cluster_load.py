"""Real daemons under load on the private cluster, and what they saw of a fault.

:class:`Daemon` is one ``rpc run`` process of the journal service
(:mod:`tests.integration.cluster_services`), its log kept in a file so a test can
count its reconnections. :class:`Load` drives calls, idempotent calls, confirmed
casts and confirmed events from threads of the test process, each loop bounded in
count and time, and keeps what each one saw and when.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rpc import BrokerError, ClusterProxy, Config, RpcError
from rpc.local_cluster import LocalCluster
from tests.integration.cluster_services import JOURNAL_ENV
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command, stop

#: What the transport logs each time a connection is lost (rpc.transport.link).
RECONNECTING = "reconnecting"
SERVICE = "tests.integration.cluster_services:Journal"


def node_urls(cluster: LocalCluster, order: Sequence[int], vhost: str) -> str:
    """The ``;`` list of the given nodes' URLs on ``vhost``, in that order."""
    return ";".join(
        cluster.node(index).url.rstrip("/") + f"/{vhost}" for index in order
    )


@contextlib.contextmanager
def private_vhost(cluster: LocalCluster) -> Iterator[str]:
    """A vhost of the test's own on the cluster, deleted after."""
    vhost = f"faults-{uuid.uuid4().hex[:8]}"
    node = next(node for node in cluster.nodes if node.running)
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield vhost
    finally:
        for node in cluster.nodes:
            if node.running:
                with contextlib.suppress(Exception):
                    node.ctl("delete_vhost", vhost)
                break


class Daemon:
    """One ``rpc run`` process of the journal service on the cluster."""

    def __init__(
        self, broker_url: str, journal: Path, log: Path, **settings: str
    ) -> None:
        self.log = log
        environment = project_env(
            broker_url,
            **{JOURNAL_ENV: str(journal)},
            **{f"RPC_{name.upper()}": value for name, value in settings.items()},
        )
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                rpc_command("run", SERVICE),
                cwd=PROJECT_ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=output,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def reconnects(self) -> int:
        """Connections this process lost so far (each one is followed by a new one)."""
        return sum(RECONNECTING in line for line in self.text().splitlines())

    def stop(self) -> None:
        stop([self.process])


@contextlib.contextmanager
def daemons(
    urls: Sequence[str], journal: Path, logs: Path, **settings: str
) -> Iterator[list[Daemon]]:
    """One daemon per URL list; all stopped after."""
    started = [
        Daemon(url, journal, logs / f"daemon-{number}.log", **settings)
        for number, url in enumerate(urls, 1)
    ]
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()


@dataclasses.dataclass
class Outcome:
    """One call, cast or event of the load: when it started and ended, and how."""

    kind: str
    token: str
    started: float
    ended: float
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ReconnectCounter(logging.Handler):
    """Counts the test process's own lost connections (the load's proxy)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if RECONNECTING in record.getMessage():
            self.count += 1


class Load:
    """Calls, idempotent calls, confirmed casts and events from a few threads.

    Every loop stops at :meth:`stop`, after ``limit`` messages, or after
    ``max_seconds``, whichever comes first; each call has a timeout.
    """

    KINDS = ("cast", "event", "read", "write")

    def __init__(
        self,
        broker_url: str,
        *,
        config: Config,
        cast_method: str = "record",
        pause: float = 0.02,
        limit: int = 2000,
        max_seconds: float = 90.0,
        call_timeout: float = 15.0,
    ) -> None:
        self.proxy = ClusterProxy(config=config.replace(broker_url=broker_url))
        self.cast_method = cast_method
        self.pause = pause
        self.limit = limit
        self.max_seconds = max_seconds
        self.call_timeout = call_timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reconnects = ReconnectCounter()

    def __enter__(self) -> Load:
        logging.getLogger("rpc.transport").addHandler(self.reconnects)
        self.proxy.start()
        for kind in self.KINDS:
            thread = threading.Thread(
                target=self._loop, args=(kind,), name=f"load-{kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.proxy.stop()
        logging.getLogger("rpc.transport").removeHandler(self.reconnects)

    def stop(self) -> None:
        """End every loop; each ends within one call's timeout."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.call_timeout + 10)
        assert not any(thread.is_alive() for thread in self._threads), "load hangs"

    def _send(self, kind: str) -> Callable[[str], object]:
        journal = self.proxy.journal
        timeout = self.call_timeout
        if kind == "cast":
            method = getattr(journal, self.cast_method)
            return lambda token: method.cast(token)
        if kind == "event":
            return lambda token: self.proxy.dispatch(
                "journal", "noted", {"token": token}, timeout=timeout
            )
        # "read" is @rpc(idempotent=True), "write" is not: the proxy learns which
        # from the service's replies.
        return lambda token: self.proxy.call("journal", kind, [token], timeout=timeout)

    def _loop(self, kind: str) -> None:
        send = self._send(kind)
        ends = time.monotonic() + self.max_seconds
        for number in range(self.limit):
            if self._stop.is_set() or time.monotonic() > ends:
                return
            token = f"{kind}-{number}-{uuid.uuid4().hex[:6]}"
            started = time.monotonic()
            error: BaseException | None = None
            try:
                send(token)
            except RpcError as exc:
                error = exc
            with self._lock:
                self.outcomes.append(
                    Outcome(kind, token, started, time.monotonic(), error)
                )
            # A lost connection fails sends at once: do not spin meanwhile.
            self._stop.wait(self.pause if error is None else 0.2)

    # -- what the load saw -----------------------------------------------------------

    def of(self, kind: str) -> list[Outcome]:
        with self._lock:
            return [outcome for outcome in self.outcomes if outcome.kind == kind]

    def wait_for(self, kind: str, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` sends of ``kind`` succeeded (bounded)."""
        deadline = time.monotonic() + timeout
        while sum(outcome.ok for outcome in self.of(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} {kind}s got through")
            time.sleep(0.05)

    def recovery(self, fault: float) -> float:
        """Seconds from ``fault`` to the end of the first call sent after it that
        was answered."""
        answered = [
            outcome.ended
            for outcome in self.outcomes
            if outcome.kind in ("read", "write")
            and outcome.ok
            and outcome.started >= fault
        ]
        if not answered:
            raise AssertionError("no call was answered after the fault")
        return min(answered) - fault

    def errors(self, kind: str) -> list[BaseException]:
        return [outcome.error for outcome in self.of(kind) if outcome.error is not None]

    def longest(self, kind: str) -> float:
        return max(
            (outcome.ended - outcome.started for outcome in self.of(kind)), default=0
        )

    def confirmed(self, kind: str) -> set[str]:
        return {outcome.token for outcome in self.of(kind) if outcome.ok}


def wait_recorded(
    read: Callable[[], list[str]], tokens: set[str], timeout: float = 60.0
) -> set[str]:
    """Poll a journal until every token is in it; the ones still missing."""
    deadline = time.monotonic() + timeout
    while True:
        missing = tokens - set(read())
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.25)


def broker_errors_only(errors: Sequence[BaseException]) -> list[BaseException]:
    """The errors that are not BrokerError: a call in flight may fail only so."""
    return [error for error in errors if not isinstance(error, BrokerError)]
