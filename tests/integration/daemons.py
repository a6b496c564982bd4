"""Start `rpc run` daemons of this checkout as real processes, and stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rpc import ClusterProxy, UnknownServiceError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_env(broker_url: str, **extra: str) -> dict[str, str]:
    """Environment for a child that runs this checkout against ``broker_url``."""
    paths = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "RPC_BROKER_URL": broker_url,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        **extra,
    }


def rpc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rpc", *args]


@contextmanager
def daemons(
    broker_url: str, services: Sequence[str], count: int = 1, *extra_args: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run ``count`` identical daemons; SIGTERM them afterwards, SIGKILL if stuck."""
    processes = [
        subprocess.Popen(
            rpc_command("run", *services, *extra_args),
            cwd=PROJECT_ROOT,
            env=project_env(broker_url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        yield processes
    finally:
        stop(processes)


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process, SIGKILL one still there 30 s later; close its stderr."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def wait_until_served(
    cluster: ClusterProxy,
    service: str,
    method: str = "echo",
    args: Sequence[object] = ("ready",),
    timeout: float = 30,
) -> None:
    """Call until the service's queue exists: daemons declare it as they start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cluster.call(service, method, args, timeout=5)
            return
        except UnknownServiceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
