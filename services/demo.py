"""The demo: start the example services as two daemons, call through them, stop them.

    python -m services.demo

It makes sure RabbitMQ is reachable first (starting a local one if it is installed),
so on a fresh checkout this is the only command needed to see the framework work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from rpc import ClusterProxy, Config, UnknownServiceError

SERVICES = [
    "services.greeter:Greeter",
    "services.greeter:Frontend",
    "services.compute:Compute",
]
DAEMONS = 2
READY_TIMEOUT = 30.0


def start_daemons(count: int) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` identical worker daemons sharing the same queues."""
    return [
        subprocess.Popen([sys.executable, "-m", "rpc", "run", *SERVICES])
        for _ in range(count)
    ]


def wait_until_served(cluster: ClusterProxy) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            cluster.greeter.hello("ready?")
            return
        except UnknownServiceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    subprocess.run([sys.executable, "-m", "rpc", "broker", "ensure"], check=True)
    daemons = start_daemons(DAEMONS)
    try:
        with ClusterProxy(config=Config.load()) as cluster:
            wait_until_served(cluster)
            print("frontend.welcome('world') ->", cluster.frontend.welcome("world"))
            print("greeter.hello(name='rpc') ->", cluster.greeter.hello(name="rpc"))
            started = time.perf_counter()
            futures = [
                cluster.compute.compute.call_async(count=200_000, seed=seed)
                for seed in range(4)
            ]
            sums = [future.result() for future in futures]
            elapsed = time.perf_counter() - started
            print(f"compute.compute x4 (200,000 random ints each) -> {sums}")
            print(f"  in {elapsed:.2f}s over {DAEMONS} daemons")
    finally:
        for daemon in daemons:
            daemon.send_signal(signal.SIGTERM)
        codes = [daemon.wait(timeout=30) for daemon in daemons]
    print(f"daemons stopped with exit codes {codes}")
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
