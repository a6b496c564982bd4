"""N worker processes for one set of services: restart with backoff, forward signals.

Threads share one interpreter lock, so CPU-bound handlers need processes to use more
than one core. The supervisor forks ``processes`` children; each runs its own
:class:`~rpc.worker.ServiceRunner`, with its own broker connection and handler pool,
and all of them consume the same queues. The supervisor itself never talks to the
broker: it only starts, watches and stops children.

Signals: SIGTERM or SIGINT stop every child gracefully (each finishes its calls in
progress) and the supervisor exits 0 once they have drained; a second one kills them.
SIGHUP replaces the children one at a time, each new one started and consuming before
the old one is told to stop, so no call is lost and capacity never drops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from rpc.config import Config
from rpc.errors import ConfigError, RpcError
from rpc.logs import status
from rpc.observability import instrument_worker
from rpc.service import ServiceDefinition
from rpc.worker import ServiceRunner

log = logging.getLogger(__name__)

#: Seconds before the first restart of a child that crashed; doubles on each crash.
FIRST_RESTART_DELAY = 0.5
#: The longest wait between two restarts of a crash-looping child.
MAX_RESTART_DELAY = 30.0
#: A child that lived this long before dying was healthy: its crash count resets.
STABLE_AFTER = 30.0
#: Seconds between checks, in a child, that its supervisor is still alive.
PARENT_CHECK_INTERVAL = 1.0
#: Extra seconds a child may take to exit beyond the configured shutdown timeout.
EXIT_GRACE = 15.0

FORWARDED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

CHILD_EXITED = "worker %d (pid %d) exited with %s; restarting in %.1fs"
OLD_STOPPING = "worker %d: stopping the old process (pid %d), replaced by pid %d"
OLD_STOPPED = "worker %d: old process (pid %d) stopped%s"
#: Exit status of a child the broker refused (EX_NOPERM): it is not restarted.
REFUSED_EXIT = 77
CHILD_REFUSED = (
    "worker %d (pid %d) was refused by the broker (its error is above); stopping: "
    "a restart cannot change permissions or certificates"
)


def restart_delay(
    crashes: int,
    *,
    first: float = FIRST_RESTART_DELAY,
    maximum: float = MAX_RESTART_DELAY,
) -> float:
    """Seconds before restarting a child that crashed ``crashes`` times in a row.

    Exponential, so a child that cannot start (broker down, a bad deployment) is
    retried quickly once and then ever more slowly, never in a tight loop.
    """
    if crashes <= 0:
        return 0.0
    return float(min(first * 2 ** (crashes - 1), maximum))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def process_count(value: str | int) -> int:
    """Number of worker processes from ``--processes``: a positive int, or ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return usable_cpus()
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"processes must be a positive number or 'auto', not {value!r}"
        ) from None
    if count < 1:
        raise ConfigError(f"processes must be at least 1, not {count}")
    return count


def serve(
    services: Sequence[type],
    config: Config,
    stop: threading.Event,
    *,
    on_ready: Callable[[], None] | None = None,
    parent_pid: int | None = None,
) -> None:
    """Run ``services`` in this process until ``stop`` is set, then drain and close.

    ``parent_pid``: stop as well when that process is gone, so children of a
    supervisor that was killed do not linger.
    """
    instruments = instrument_worker(
        config, [ServiceDefinition.from_class(cls) for cls in services]
    )
    try:
        runner = ServiceRunner(
            services,
            config,
            middleware=instruments.middleware,
            observer=instruments.observer,
        )
        runner.start()
        instruments.running(
            config.max_workers, config.max_async if runner.has_async else 0
        )
        if on_ready is not None:
            on_ready()
        try:
            while not stop.wait(PARENT_CHECK_INTERVAL):
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("supervisor %d is gone; stopping", parent_pid)
                    break
        finally:
            runner.stop()
    finally:
        instruments.stop()


def _child_main(
    services: Sequence[type], config: Config, ready: Connection, parent_pid: int
) -> None:
    """Entry point of a worker process (after fork)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Reloading is the supervisor's business: ignore a SIGHUP sent to the group.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)

    def announce() -> None:
        with contextlib.suppress(OSError):
            ready.send(os.getpid())
            ready.close()

    try:
        serve(services, config, stop, on_ready=announce, parent_pid=parent_pid)
    except RpcError as exc:
        log.error("worker failed: %s", exc)
        # A refusal (permissions, a certificate) is the same on every restart.
        permanent = getattr(exc, "permanent", False)
        raise SystemExit(REFUSED_EXIT if permanent else 1) from None


@dataclasses.dataclass
class _Slot:
    """One of the N places a worker process runs in."""

    index: int
    process: Any = None  # multiprocessing.Process (BaseProcess is awkward to type)
    ready: Connection | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None


class Supervisor:
    """Keeps ``processes`` worker processes of ``services`` running."""

    def __init__(
        self,
        services: Sequence[type],
        config: Config,
        *,
        processes: int,
        on_child_exit: Callable[[int], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ConfigError("processes must be at least 1")
        #: Told the pid of each child that exited (the metrics' gauges go with it).
        self._on_child_exit = on_child_exit
        self.services = list(services)
        self.config = config
        self.processes = processes
        # Fork: children inherit the imported service classes; nothing is re-imported
        # and the supervisor holds no connection or thread that forking could break.
        self._context = multiprocessing.get_context("fork")
        self._slots = [_Slot(index) for index in range(1, processes + 1)]
        self._stop_requested = 0
        self._stop_signal: int | None = None
        self._reload_requested = False
        #: A child the broker refused: the supervisor stops, and exits 1.
        self._refused = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the children alive now."""
        return [
            slot.process.pid
            for slot in self._slots
            if slot.process is not None and slot.process.is_alive()
        ]

    def run(self) -> int:
        """Start the children and supervise them until a stop signal; the exit code."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in FORWARDED_SIGNALS
        }
        try:
            for slot in self._slots:
                self._start(slot)
            while not self._stop_requested:
                if self._reload_requested:
                    self._reload_requested = False
                    self._replace_all()
                self._reap()
                self._wait_for_events()
            status = self._stop_all()
            return 1 if self._refused else status
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # -- signals -------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
            return
        self._stop_requested += 1
        if self._stop_signal is None:
            self._stop_signal = signum
        if self._stop_requested > 1:
            # Asked twice: the operator does not want to wait for the drain.
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # -- children ------------------------------------------------------------------

    def _spawn(self, index: int) -> tuple[Any, Connection]:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child_main,
            args=(self.services, self.config, writer, os.getpid()),
            name=f"rpc-worker-{index}",
            daemon=False,
        )
        # Block our signals across the fork: a child must not run the supervisor's
        # handlers before it has installed its own (it unblocks them then).
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        # Our copy of the write end must go, or a dead child would not read as EOF.
        writer.close()
        status.info("worker %d started (pid %d)", index, process.pid)
        return process, reader

    def _start(self, slot: _Slot) -> None:
        slot.process, slot.ready = self._spawn(slot.index)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is not None and not slot.process.is_alive():
                slot.process.join()
                code = slot.process.exitcode
                if code == REFUSED_EXIT:
                    log.error(CHILD_REFUSED, slot.index, slot.process.pid)
                    self._close_ready(slot)
                    slot.process = None
                    self._refused = True
                    self._stop_requested = max(self._stop_requested, 1)
                    continue
                if now - slot.started_at >= STABLE_AFTER:
                    slot.crashes = 0
                slot.crashes += 1
                delay = restart_delay(slot.crashes)
                log.warning(
                    CHILD_EXITED, slot.index, slot.process.pid, _describe(code), delay
                )
                self._close_ready(slot)
                self._exited(slot.process.pid)
                slot.process = None
                slot.restart_at = now + delay
            due = slot.restart_at
            if slot.process is None and due is not None and now >= due:
                self._start(slot)

    def _wait_for_events(self) -> None:
        """Sleep until a child dies or reports, a restart is due, or a signal came."""
        handles: list[Any] = []
        for slot in self._slots:
            if slot.process is not None:
                handles.append(slot.process.sentinel)
                if slot.ready is not None:
                    handles.append(slot.ready)
        timeout = 0.5
        due = [s.restart_at for s in self._slots if s.restart_at is not None]
        if due:
            timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        for ready in wait(handles, timeout):
            for slot in self._slots:
                if ready is slot.ready:
                    self._read_ready(slot)

    def _read_ready(self, slot: _Slot) -> bool:
        """Consume the child's "consuming now" message; True once it came."""
        if slot.ready is None:
            return True
        try:
            if not slot.ready.poll():
                return False
            slot.ready.recv()
        except (EOFError, OSError):
            self._close_ready(slot)  # died before it was ready: _reap sees it
            return False
        self._close_ready(slot)
        status.info("worker %d (pid %d) is consuming", slot.index, slot.process.pid)
        return True

    @staticmethod
    def _close_ready(slot: _Slot) -> None:
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None

    def _replace_all(self) -> None:
        """Replace each child with a fresh one: start the new, then drain the old."""
        status.info("SIGHUP: replacing %d workers one by one", len(self._slots))
        for slot in self._slots:
            if self._stop_requested:
                return
            new, ready = self._spawn(slot.index)
            if not self._wait_ready(new, ready):
                log.error(
                    "worker %d: replacement (pid %d) did not start; keeping the old",
                    slot.index,
                    new.pid,
                )
                self._terminate([new])
                return
            old = slot.process
            slot.process, slot.started_at, slot.crashes = new, time.monotonic(), 0
            self._close_ready(slot)
            slot.restart_at = None
            if old is not None:
                status.info(OLD_STOPPING, slot.index, old.pid, new.pid)
                clean = self._terminate([old])
                status.info(
                    OLD_STOPPED, slot.index, old.pid, "" if clean else " (not cleanly)"
                )
        status.info("SIGHUP: reload done, every worker replaced")

    def _wait_ready(self, process: Any, ready: Connection) -> bool:
        deadline = time.monotonic() + self.config.connect_timeout + EXIT_GRACE
        try:
            while time.monotonic() < deadline and not self._stop_requested:
                if ready.poll(0.5):
                    try:
                        ready.recv()
                    except EOFError:
                        return False
                    return bool(process.is_alive())
                if not process.is_alive():
                    return False
            return False
        finally:
            ready.close()

    def _terminate(self, processes: list[Any]) -> bool:
        """SIGTERM ``processes``, wait for them to drain; SIGKILL the stuck ones."""
        for process in processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout + EXIT_GRACE
        clean = True
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %d did not drain in time; killed", process.pid)
                process.kill()
                process.join(5)
                clean = False
            elif process.exitcode != 0:
                clean = False
            self._exited(process.pid)
        return clean

    def _exited(self, pid: int) -> None:
        if self._on_child_exit is not None:
            try:
                self._on_child_exit(pid)
            except Exception:
                log.exception("after worker pid %d exited", pid)

    def _stop_all(self) -> int:
        signum = self._stop_signal
        reason = signal.Signals(signum).name if signum is not None else "asked to stop"
        status.info("%s: stopping %d workers", reason, len(self.pids))
        processes = [slot.process for slot in self._slots if slot.process is not None]
        for slot in self._slots:
            self._close_ready(slot)
            slot.restart_at = None
        clean = self._terminate(processes)
        code = 0 if clean else 1
        status.info("every worker stopped; exiting with %d", code)
        return code


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-exitcode).name}"
    return f"code {exitcode}"
