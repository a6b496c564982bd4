"""Processes and broker plumbing: a private vhost, daemons, readiness, memory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import kombu
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCH_SERVICE = "benchmarks.services:Bench"
COMPUTE_SERVICE = "services.compute:Compute"


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


@contextlib.contextmanager
def private_vhost(base_url: str) -> Iterator[str]:
    """A URL to a fresh vhost, so the run neither sees nor disturbs anyone else's."""
    if shutil.which("rabbitmqctl") is None:
        # A remote broker: the names the suite uses are its own (rpc-bench, ...).
        yield base_url
        return
    vhost = f"bench-{uuid.uuid4().hex[:12]}"
    parts = urlsplit(base_url)
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl(
            "set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*"
        )
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def child_env(broker_url: str) -> dict[str, str]:
    """Children run this checkout of the project against ``broker_url``."""
    paths = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "RPC_BROKER_URL": broker_url,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
    }


def worker_command(service: str, broker_url: str, processes: int = 1) -> list[str]:
    """``rpc run``: one process, or a supervisor with ``processes`` children."""
    command = [sys.executable, "-m", "rpc", "run", service, "--broker", broker_url]
    if processes > 1:
        command += ["--processes", str(processes)]
    return command


def baseline_command(broker_url: str, queue: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.baseline", broker_url, queue]


def spawn(
    command: Sequence[str], broker_url: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # Kept open until terminate(): the child's stderr, shown if it dies early.
    log = tempfile.TemporaryFile()  # noqa: SIM115
    process = subprocess.Popen(
        list(command),
        cwd=PROJECT_ROOT,
        env={**child_env(broker_url), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    process._bench_log = log  # type: ignore[attr-defined]
    return process


def terminate(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM, then SIGKILL what is still there after a while."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log = getattr(process, "_bench_log", None)
        if log is not None:
            log.close()


def stderr_of(process: subprocess.Popen[bytes]) -> str:
    log = getattr(process, "_bench_log", None)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


def consumer_count(broker_url: str, queue: str) -> int:
    """Consumers on ``queue`` right now; 0 if it does not exist yet."""
    with kombu.Connection(broker_url) as connection:
        channel = connection.channel()
        try:
            _, _, consumers = channel.queue_declare(queue=queue, passive=True)
        except connection.channel_errors:
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()
        return int(consumers)


@contextlib.contextmanager
def running(
    commands: Sequence[Sequence[str]],
    broker_url: str,
    queue: str,
    timeout: float = 60.0,
    consumers: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start the processes (``env`` added to their environment) and wait until
    ``queue`` has ``consumers`` (default: one per process); stop them after."""
    processes = [spawn(command, broker_url, env) for command in commands]
    expected = len(processes) if consumers is None else consumers
    try:
        deadline = time.monotonic() + timeout
        while consumer_count(broker_url, queue) < expected:
            for process in processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{' '.join(process.args)} exited:\n{stderr_of(process)}"  # type: ignore[arg-type]
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumers on {queue} did not start in {timeout}s")
            time.sleep(0.05)
        yield processes
    finally:
        terminate(processes)


def rss_mb(pid: int) -> float:
    """Resident memory of one process, in MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


def machine() -> dict[str, object]:
    """What the numbers came from."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "kombu": kombu.__version__,
    }


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()
