"""``python -m benchmarks.cpu``: CPU time per call of client, worker and broker.

Rates on a shared 2-core machine move with whatever else runs; the CPU time each
process spends per call moves much less, and says which side a change helped. Runs
no-op calls with a window of calls in flight against one worker, alternating the
threaded client, the asyncio client and the baseline, and reads each process's CPU
time with psutil. The broker counts only when it runs on this machine (``beam.smp``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psutil

from benchmarks import harness
from benchmarks.baseline import BaselineClient
from benchmarks.workloads import (
    BASELINE_QUEUE,
    BENCH_QUEUE,
    AsyncClient,
    framework_pipelined,
)
from rpc import ClusterProxy

SIDES = ("framework", "asyncio", "baseline")


def _cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def _local_broker() -> psutil.Process | None:
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "beam.smp":
            return process
    return None


def measure(
    broker_url: str, calls: int, in_flight: int, repetitions: int
) -> dict[str, dict[str, float]]:
    """Median µs of CPU per call for each side and process, and calls/s."""
    broker = _local_broker()
    client = psutil.Process()
    worker = harness.worker_command(harness.BENCH_SERVICE, broker_url)
    server = harness.baseline_command(broker_url, BASELINE_QUEUE)
    rows: dict[str, list[tuple[float, float, float, float]]] = {s: [] for s in SIDES}
    with (
        harness.running([worker], broker_url, BENCH_QUEUE) as ours,
        harness.running([server], broker_url, BASELINE_QUEUE) as theirs,
        ClusterProxy(broker_url, timeout=60) as cluster,
    ):
        baseline = BaselineClient(broker_url)
        awaiting = AsyncClient(broker_url)
        try:
            framework_pipelined(cluster, calls // 10, in_flight)
            awaiting.pipelined(calls // 10, in_flight)
            baseline.run(BASELINE_QUEUE, calls // 10, in_flight=in_flight)
            for _ in range(repetitions):
                for side in SIDES:
                    pid = (theirs if side == "baseline" else ours)[0].pid
                    served = psutil.Process(pid)
                    before = [_cpu_seconds(p) for p in (client, served, broker)]
                    started = time.perf_counter()
                    if side == "framework":
                        framework_pipelined(cluster, calls, in_flight)
                    elif side == "asyncio":
                        awaiting.pipelined(calls, in_flight)
                    else:
                        baseline.run(BASELINE_QUEUE, calls, in_flight=in_flight)
                    seconds = time.perf_counter() - started
                    after = [_cpu_seconds(p) for p in (client, served, broker)]
                    spent = zip(before, after, strict=True)
                    client_us, server_us, broker_us = (
                        (b - a) / calls * 1e6 for a, b in spent
                    )
                    rows[side].append(
                        (client_us, server_us, broker_us, calls / seconds)
                    )
        finally:
            awaiting.close()
            baseline.close()
    keys = ("client_us", "server_us", "broker_us", "calls_per_s")
    return {
        side: {
            key: statistics.median(row[i] for row in rows[side])
            for i, key in enumerate(keys)
        }
        for side in SIDES
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu", description=__doc__
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("RPC_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--repetitions", type=int, default=5)
    options = parser.parse_args(argv)
    with harness.private_vhost(options.broker) as url:
        result = measure(url, options.calls, options.in_flight, options.repetitions)
    print("| | client µs | worker µs | broker µs | calls/s |")
    print("|---|---:|---:|---:|---:|")
    for side, row in result.items():
        print(
            f"| {side} | {row['client_us']:.0f} | {row['server_us']:.0f} "
            f"| {row['broker_us']:.0f} | {row['calls_per_s']:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
