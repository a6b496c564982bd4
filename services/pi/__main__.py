"""Run the pi mesh: start every service as `rpc run` daemons, feed it, print pi.

python -m services.pi --seconds 10
python -m services.pi --seconds 10 --scale judge=3 --scale pythagoras=2
python -m services.pi --attach       # the services already run (docker compose)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rpc import ClusterProxy, Config, UnknownServiceError

#: Service name -> the class `rpc run` loads, in start order.
SERVICES = {
    "tally": "services.pi.tally:Tally",
    "pythagoras": "services.pi.pythagoras:Pythagoras",
    "judge": "services.pi.judge:Judge",
    "always_yes": "services.pi.always_yes:AlwaysYes",
    "bitsource": "services.pi.bitsource:BitSource",
}
#: The method each service answers once it is ready.
READY = {
    "tally": "estimate",
    "pythagoras": "sum_of_squares",
    "judge": "ping",
    "always_yes": "ping",
    "bitsource": "produce",
}
READY_ARGS: dict[str, list[object]] = {"pythagoras": [[]], "bitsource": [0]}
#: Where the `services` package lives, so the daemons import this same code.
CODE_ROOT = Path(__file__).resolve().parents[2]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.pi", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="feeding time")
    parser.add_argument("--batch", type=int, default=50, help="points per request")
    parser.add_argument("--broker", help="AMQP URL [env: RPC_BROKER_URL]")
    parser.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="SERVICE=N",
        help="worker processes of a service (default 1 each)",
    )
    parser.add_argument(
        "--attach", action="store_true", help="use services that already run"
    )
    arguments = parser.parse_args(argv)
    arguments.workers = {name: 1 for name in SERVICES}
    for item in arguments.scale:
        name, _, count = item.partition("=")
        if name not in SERVICES or not count.isdigit() or int(count) < 1:
            parser.error(
                f"--scale takes SERVICE=N with SERVICE in {', '.join(SERVICES)}"
            )
        arguments.workers[name] = int(count)
    return arguments


@contextlib.contextmanager
def daemons(workers: dict[str, int], broker_url: str) -> Iterator[None]:
    """Start `rpc run` daemons for every service; stop them on the way out."""
    env = dict(os.environ, RPC_BROKER_URL=broker_url)
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if path
    )
    processes = [
        subprocess.Popen([sys.executable, "-m", "rpc", "run", SERVICES[name]], env=env)
        for name, count in workers.items()
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def wait_until_ready(cluster: ClusterProxy, timeout: float = 60.0) -> None:
    """Call every service until it answers: its queues are then declared."""
    deadline = time.monotonic() + timeout
    for name, method in READY.items():
        while True:
            try:
                cluster.call(name, method, READY_ARGS.get(name, []), timeout=10)
                break
            except UnknownServiceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def feed(cluster: ClusterProxy, seconds: float, batch: int, sources: int) -> int:
    """Have the bit sources publish points for ``seconds``; return how many."""
    produced = 0
    stop = time.monotonic() + seconds
    next_report = time.monotonic() + 1
    while time.monotonic() < stop:
        produced += sum(cluster.bitsource.produce.map([batch] * sources))
        if time.monotonic() >= next_report:
            next_report += 1
            report(cluster.tally.estimate(), produced)
    return produced


def report(estimate: dict[str, float | int | None], produced: int) -> None:
    pi = estimate["pi"]
    shown = "-" if pi is None else f"{pi:.5f}"
    print(
        f"points published {produced:>7}  tallied {estimate['total']:>7}  pi ~ {shown}"
    )


def settle(cluster: ClusterProxy, produced: int, timeout: float = 60.0) -> dict:
    """Wait until the tally has every verdict, or stops getting new ones."""
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while True:
        estimate = cluster.tally.estimate()
        total = int(estimate["total"])
        if total >= produced or time.monotonic() > deadline:
            return estimate
        if total != last:
            last, still_since = total, time.monotonic()
        elif time.monotonic() - still_since > 5:
            return estimate  # several tallies: this one has all it will get
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    config = Config.load(broker_url=arguments.broker, default_timeout=30)
    with contextlib.ExitStack() as stack:
        if not arguments.attach:
            stack.enter_context(daemons(arguments.workers, config.broker_url))
        cluster = stack.enter_context(ClusterProxy(config=config))
        wait_until_ready(cluster)
        produced = feed(
            cluster, arguments.seconds, arguments.batch, arguments.workers["bitsource"]
        )
        estimate = settle(cluster, produced)
        report(estimate, produced)
        pi = estimate["pi"]
        if pi is None:
            print("no verdict reached the tally", file=sys.stderr)
            return 1
        print(f"estimate: {pi:.6f} (error {pi - math.pi:+.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
