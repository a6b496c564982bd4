"""The workloads, each run on the framework and on the Kombu baseline in turn."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks import cache as cache_benchmark
from benchmarks import harness
from benchmarks.baseline import BaselineClient
from benchmarks.services import EVENT_SOURCE, EVENT_TYPE
from rpc import AsyncClusterProxy, ClusterProxy, UnknownServiceError

BASELINE_QUEUE = "baseline-bench"
BENCH_QUEUE = "rpc-bench"
COMPUTE_QUEUE = "rpc-compute"
KIB = 1024


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much of each workload to run: a full run or a quick one."""

    name: str
    repetitions: int
    warmup: int
    latency_calls: int
    throughput_calls: int
    in_flight: tuple[int, ...]
    processes: tuple[int, ...]
    payload_calls: dict[int, int]
    compute_count: int
    compute_calls: int
    startup_repetitions: int
    messages: int
    #: Throughput runs are the long ones (20,000 calls each): fewer repetitions.
    throughput_repetitions: int

    def steps(self) -> int:
        """Measurements the progress bar counts."""
        throughput = len(self.in_flight) * len(self.processes)
        return (
            self.repetitions * (1 + len(self.payload_calls) + 2 + 2)
            + self.throughput_repetitions * throughput
            + self.startup_repetitions
            + 1
            + 1  # the result cache
        )


FULL = Plan(
    name="full",
    repetitions=3,
    warmup=300,
    latency_calls=2000,
    throughput_calls=20_000,
    in_flight=(1, 8, 32, 128),
    processes=(1, 2),
    payload_calls={KIB: 1000, 64 * KIB: 300, 1024 * KIB: 30},
    compute_count=1_000_000,
    compute_calls=8,
    startup_repetitions=3,
    messages=1000,
    throughput_repetitions=2,
)
QUICK = Plan(
    name="quick",
    repetitions=1,
    warmup=50,
    latency_calls=200,
    throughput_calls=1000,
    in_flight=(1, 8, 32, 128),
    processes=(1, 2),
    payload_calls={KIB: 50, 64 * KIB: 20, 1024 * KIB: 3},
    compute_count=100_000,
    compute_calls=8,
    startup_repetitions=1,
    messages=100,
    throughput_repetitions=1,
)

Progress = Callable[[str], None]


def _percentile(sorted_values: list[int], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return float(sorted_values[index])


def _latency_stats(latencies_ns: list[int], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    return {
        "p50_us": _percentile(ordered, 0.50) / 1000,
        "p90_us": _percentile(ordered, 0.90) / 1000,
        "p99_us": _percentile(ordered, 0.99) / 1000,
        "calls_per_s": len(ordered) / seconds,
    }


def _median_dicts(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


# -- the framework's side ------------------------------------------------------------


def framework_sequential(
    cluster: ClusterProxy, calls: int, latencies: list[int]
) -> float:
    """One call at a time, as user code writes it; round trips appended in ns."""
    start = time.perf_counter()
    for _ in range(calls):
        began = time.perf_counter_ns()
        cluster.bench.noop()
        latencies.append(time.perf_counter_ns() - began)
    return time.perf_counter() - start


def framework_pipelined(
    cluster: ClusterProxy, calls: int, in_flight: int, payload: str | None = None
) -> float:
    """Keep ``in_flight`` calls outstanding from one thread; seconds for ``calls``."""
    method = cluster.bench.noop if payload is None else cluster.bench.echo
    args: tuple[str, ...] = () if payload is None else (payload,)
    window: collections.deque[Any] = collections.deque()
    start = time.perf_counter()
    sent = 0
    while sent < min(in_flight, calls):
        window.append(method.call_async(*args))
        sent += 1
    while window:
        window.popleft().result()
        if sent < calls:
            window.append(method.call_async(*args))
            sent += 1
    return time.perf_counter() - start


class AsyncClient:
    """The asyncio client on an event loop of this thread, run for each measurement."""

    def __init__(self, broker_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.cluster = AsyncClusterProxy(broker_url, timeout=120, name="bench-async")
        self.loop.run_until_complete(self.cluster.start())

    def sequential(self, calls: int, latencies: list[int]) -> float:
        """As :func:`framework_sequential`, awaiting each call."""

        async def run() -> float:
            noop = self.cluster.bench.noop
            start = time.perf_counter()
            for _ in range(calls):
                began = time.perf_counter_ns()
                await noop()
                latencies.append(time.perf_counter_ns() - began)
            return time.perf_counter() - start

        return self.loop.run_until_complete(run())

    def pipelined(self, calls: int, in_flight: int) -> float:
        """As :func:`framework_pipelined`: ``in_flight`` calls outstanding."""

        async def run() -> float:
            method = self.cluster.bench.noop
            window: collections.deque[Any] = collections.deque()
            start = time.perf_counter()
            sent = 0
            while sent < min(in_flight, calls):
                window.append(await method.call_async())
                sent += 1
            while window:
                await window.popleft()
                if sent < calls:
                    window.append(await method.call_async())
                    sent += 1
            return time.perf_counter() - start

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.cluster.stop())
        self.loop.close()


# -- the workloads ---------------------------------------------------------------------


@dataclasses.dataclass
class Clients:
    cluster: ClusterProxy
    baseline: BaselineClient
    asyncio: AsyncClient


def warm_up(clients: Clients, calls: int) -> None:
    framework_pipelined(clients.cluster, calls, 1)
    clients.asyncio.pipelined(calls, 1)
    clients.baseline.run(BASELINE_QUEUE, calls)


def latency(clients: Clients, plan: Plan, progress: Progress) -> dict[str, Any]:
    """Sequential no-op calls: percentiles of the round trip, and calls/s."""
    framework, baseline, ratios, asyncio_runs, asyncio_ratios = [], [], [], [], []
    for _ in range(plan.repetitions):
        warm_up(clients, plan.warmup)
        latencies: list[int] = []
        seconds = framework_sequential(clients.cluster, plan.latency_calls, latencies)
        ours = _latency_stats(latencies, seconds)
        latencies = []
        seconds = clients.asyncio.sequential(plan.latency_calls, latencies)
        awaited = _latency_stats(latencies, seconds)
        asyncio_runs.append(awaited)
        asyncio_ratios.append({key: awaited[key] / ours[key] for key in ours})
        latencies = []
        seconds = clients.baseline.run(
            BASELINE_QUEUE, plan.latency_calls, latencies=latencies
        )
        theirs = _latency_stats(latencies, seconds)
        framework.append(ours)
        baseline.append(theirs)
        ratios.append({key: ours[key] / theirs[key] for key in ours})
        progress("latency")
    return {
        "calls": plan.latency_calls,
        "framework": _median_dicts(framework),
        "baseline": _median_dicts(baseline),
        "ratio": _median_dicts(ratios),
        "asyncio": _median_dicts(asyncio_runs),
        #: The asyncio client against the threaded one, in the same repetition.
        "asyncio_ratio": _median_dicts(asyncio_ratios),
    }


def throughput(
    clients: Clients, plan: Plan, processes: int, progress: Progress
) -> list[dict[str, Any]]:
    """No-op calls with 1..128 in flight, as fast as the workers answer."""
    rows = []
    for in_flight in plan.in_flight:
        ours, theirs, ratios, awaited, awaited_ratios = [], [], [], [], []
        for _ in range(plan.throughput_repetitions):
            warm_up(clients, plan.warmup)
            calls = plan.throughput_calls
            fw = calls / framework_pipelined(clients.cluster, calls, in_flight)
            aio = calls / clients.asyncio.pipelined(calls, in_flight)
            bl = calls / clients.baseline.run(
                BASELINE_QUEUE, calls, in_flight=in_flight
            )
            ours.append(fw)
            theirs.append(bl)
            ratios.append(fw / bl)
            awaited.append(aio)
            awaited_ratios.append(aio / fw)
            progress(f"throughput {processes}p x{in_flight}")
        rows.append(
            {
                "processes": processes,
                "in_flight": in_flight,
                "calls": plan.throughput_calls,
                "framework_calls_per_s": statistics.median(ours),
                "baseline_calls_per_s": statistics.median(theirs),
                "ratio": statistics.median(ratios),
                "asyncio_calls_per_s": statistics.median(awaited),
                #: The asyncio client against the threaded one.
                "asyncio_ratio": statistics.median(awaited_ratios),
            }
        )
    return rows


def payload(clients: Clients, plan: Plan, progress: Progress) -> list[dict[str, Any]]:
    """Round trips of large strings, one at a time; MB/s counts both directions."""
    rows = []
    for size, calls in plan.payload_calls.items():
        data = "x" * size
        ours, theirs, ratios = [], [], []
        for _ in range(plan.repetitions):
            framework_pipelined(clients.cluster, 2, 1, data)
            clients.baseline.run(BASELINE_QUEUE, 2, payload=data)
            moved = 2 * size * calls / 1e6
            fw = moved / framework_pipelined(clients.cluster, calls, 1, data)
            bl = moved / clients.baseline.run(BASELINE_QUEUE, calls, payload=data)
            ours.append(fw)
            theirs.append(bl)
            ratios.append(fw / bl)
            progress(f"payload {size // KIB} KiB")
        rows.append(
            {
                "bytes": size,
                "calls": calls,
                "framework_mb_per_s": statistics.median(ours),
                "baseline_mb_per_s": statistics.median(theirs),
                "ratio": statistics.median(ratios),
            }
        )
    return rows


def framework_confirmed(
    cluster: ClusterProxy, kind: str, messages: int, timeout: float = 300.0
) -> float:
    """Casts or events one by one, each confirmed, until the worker consumed all."""
    before = cluster.bench.seen().get(kind, 0)
    start = time.perf_counter()
    deadline = start + timeout
    for number in range(messages):
        if kind == "casts":
            cluster.bench.sink.cast(number)
        else:
            cluster.dispatch(EVENT_SOURCE, EVENT_TYPE, number)
    while cluster.bench.seen().get(kind, 0) - before < messages:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the worker did not consume its {kind}")
        time.sleep(0.002)
    return time.perf_counter() - start


def confirmed(
    clients: Clients, plan: Plan, kind: str, progress: Progress
) -> dict[str, Any]:
    """Persistent messages published with confirms and consumed, per second."""
    ours, theirs, ratios = [], [], []
    for _ in range(plan.repetitions):
        fw = plan.messages / framework_confirmed(clients.cluster, kind, plan.messages)
        bl = plan.messages / clients.baseline.publish_confirmed(
            kind, BASELINE_QUEUE, plan.messages
        )
        ours.append(fw)
        theirs.append(bl)
        ratios.append(fw / bl)
        progress(kind)
    return {
        "messages": plan.messages,
        "framework_per_s": statistics.median(ours),
        "baseline_per_s": statistics.median(theirs),
        "ratio": statistics.median(ratios),
    }


def _compute_burst(cluster: ClusterProxy, plan: Plan) -> float:
    start = time.perf_counter()
    futures = [
        cluster.compute.compute.call_async(count=plan.compute_count, seed=seed)
        for seed in range(plan.compute_calls)
    ]
    for future in futures:
        future.result()
    return time.perf_counter() - start


def cpu_scaling(
    cluster: ClusterProxy, broker_url: str, plan: Plan, progress: Progress
) -> dict[str, Any]:
    """Concurrent CPU-bound calls against 1 worker process, then against N."""
    counts = (1, max(2, os.cpu_count() or 1))
    seconds: dict[int, float] = {}
    for processes in counts:
        command = harness.worker_command(harness.COMPUTE_SERVICE, broker_url, processes)
        with harness.running([command], broker_url, COMPUTE_QUEUE, consumers=processes):
            cluster.compute.compute(count=1000)
            runs = []
            for _ in range(plan.repetitions):
                runs.append(_compute_burst(cluster, plan))
                progress(f"cpu scaling {processes}p")
            seconds[processes] = statistics.median(runs)
    many = counts[1]
    return {
        "calls": plan.compute_calls,
        "count": plan.compute_count,
        "seconds": {str(n): s for n, s in seconds.items()},
        "processes": many,
        "speedup": seconds[1] / seconds[many],
    }


def _until_served(call: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
            return
        except UnknownServiceError:
            # The queue is not there yet: the worker declares it as it starts.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _probe(kind: str, broker_url: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.probe", kind, broker_url],
        cwd=harness.PROJECT_ROOT,
        env=harness.child_env(broker_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(json.loads(out.stdout)["rss_mb"])


def cost(
    clients: Clients, broker_url: str, plan: Plan, progress: Progress
) -> dict[str, Any]:
    """Start-up time until the first call is served; memory of idle processes."""
    startup, baseline_startup = [], []
    measured: dict[str, float] = {}
    for repetition in range(plan.startup_repetitions):
        processes = []
        try:
            start = time.perf_counter()
            processes.append(
                harness.spawn(
                    harness.worker_command(harness.BENCH_SERVICE, broker_url),
                    broker_url,
                )
            )
            _until_served(lambda: clients.cluster.call("bench", "noop", timeout=60))
            startup.append(time.perf_counter() - start)
            start = time.perf_counter()
            processes.append(
                harness.spawn(
                    harness.baseline_command(broker_url, BASELINE_QUEUE), broker_url
                )
            )
            clients.baseline.run(BASELINE_QUEUE, 1, timeout=60)
            baseline_startup.append(time.perf_counter() - start)
            progress("start-up")
            if repetition == 0:
                measured["client_rss_mb"] = _probe("framework", broker_url)
                measured["baseline_client_rss_mb"] = _probe("baseline", broker_url)
                # Idle means after serving, with nothing to do for a moment.
                clients.cluster.call("bench", "noop")
                clients.baseline.run(BASELINE_QUEUE, 1)
                time.sleep(1.0)
                measured["worker_rss_mb"] = harness.rss_mb(processes[0].pid)
                measured["baseline_server_rss_mb"] = harness.rss_mb(processes[1].pid)
                progress("memory")
        finally:
            harness.terminate(processes)
    return {
        "startup_s": statistics.median(startup),
        "baseline_startup_s": statistics.median(baseline_startup),
        **measured,
    }


def run_all(broker_url: str, plan: Plan, progress: Progress) -> dict[str, Any]:
    """Every workload, in an order that reuses running processes."""
    results: dict[str, Any] = {"plan": plan.name}
    server = harness.baseline_command(broker_url, BASELINE_QUEUE)
    with ClusterProxy(broker_url, timeout=120, name="bench-client") as cluster:
        baseline = BaselineClient(broker_url)
        clients = Clients(cluster, baseline, AsyncClient(broker_url))
        try:
            rows: list[dict[str, Any]] = []
            for processes in plan.processes:
                # N framework workers: one `rpc run --processes N` (a supervisor);
                # N baseline servers: N processes.
                worker = harness.worker_command(
                    harness.BENCH_SERVICE, broker_url, processes
                )
                with (
                    harness.running(
                        [worker], broker_url, BENCH_QUEUE, consumers=processes
                    ),
                    harness.running([server] * processes, broker_url, BASELINE_QUEUE),
                ):
                    if processes == 1:
                        results["latency"] = latency(clients, plan, progress)
                        results["payload"] = payload(clients, plan, progress)
                        results["cast"] = confirmed(clients, plan, "casts", progress)
                        results["events"] = confirmed(clients, plan, "events", progress)
                    rows.extend(throughput(clients, plan, processes, progress))
            results["throughput"] = rows
            results["cpu_scaling"] = cpu_scaling(cluster, broker_url, plan, progress)
            results["cost"] = cost(clients, broker_url, plan, progress)
            results["cache"] = cache_benchmark.run(
                broker_url,
                cache_benchmark.QUICK if plan.name == "quick" else cache_benchmark.FULL,
            )
            progress("cache")
        finally:
            clients.asyncio.close()
            baseline.close()
    return results
