"""The cost of observability: a worker and a client with metrics on and tracing
installed without an exporter, against the same pair with nothing configured."""

from __future__ import annotations

import socket
import statistics
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks import harness
from benchmarks.workloads import (
    BENCH_QUEUE,
    Plan,
    Progress,
    _latency_stats,
    framework_pipelined,
    framework_sequential,
)
from rpc import ClusterProxy, Config

IN_FLIGHT = 32
#: What the issue's budget allows: instrumented/plain within 5 %.
BUDGET = 0.05


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _measure(cluster: ClusterProxy, plan: Plan) -> tuple[float, float]:
    """(latency p50 in µs, calls/s with 32 in flight) of one worker and client."""
    framework_pipelined(cluster, plan.warmup, 1)
    latencies: list[int] = []
    seconds = framework_sequential(cluster, plan.latency_calls, latencies)
    p50 = _latency_stats(latencies, seconds)["p50_us"]
    calls = plan.throughput_calls
    return p50, calls / framework_pipelined(cluster, calls, IN_FLIGHT)


def overhead(broker_url: str, plan: Plan, progress: Progress) -> dict[str, Any]:
    """Alternating repetitions: nothing configured, then metrics and tracing on."""
    plain_runs: list[tuple[float, float]] = []
    observed_runs: list[tuple[float, float]] = []
    worker = harness.worker_command(harness.BENCH_SERVICE, broker_url)
    plain_config = Config(broker_url=broker_url, default_timeout=120)
    observed_config = plain_config.replace(tracing=True)
    for _ in range(plan.repetitions):
        with (
            harness.running([worker], broker_url, BENCH_QUEUE),
            ClusterProxy(config=plain_config, name="bench-plain") as cluster,
        ):
            plain_runs.append(_measure(cluster, plan))
        port = str(_free_port())
        instrumented = [*worker, "--metrics-port", port, "--tracing"]
        with (
            harness.running([instrumented], broker_url, BENCH_QUEUE),
            ClusterProxy(
                config=observed_config,
                name="bench-observed",
                metrics_registry=CollectorRegistry(),
            ) as cluster,
        ):
            observed_runs.append(_measure(cluster, plan))
        progress("observability")

    def medians(runs: list[tuple[float, float]]) -> dict[str, float]:
        return {
            "p50_us": statistics.median(run[0] for run in runs),
            "calls_per_s_x32": statistics.median(run[1] for run in runs),
        }

    plain, observed = medians(plain_runs), medians(observed_runs)
    return {
        "plain": plain,
        "observed": observed,
        "ratio": {key: observed[key] / plain[key] for key in plain},
        "in_flight": IN_FLIGHT,
    }


def markdown(results: dict[str, Any]) -> list[str]:
    """The table of the README's and benchmarks/README.md's run."""
    row = results.get("observability")
    if not row:
        return []
    plain, observed, ratio = row["plain"], row["observed"], row["ratio"]
    return [
        "**Observability** (metrics on, tracing installed without an exporter, "
        "worker and client; against nothing configured)",
        "",
        "| | latency p50 µs | calls/s, 32 in flight |",
        "|---|---:|---:|",
        f"| nothing configured | {plain['p50_us']:,.0f} | "
        f"{plain['calls_per_s_x32']:,.0f} |",
        f"| metrics + tracing | {observed['p50_us']:,.0f} | "
        f"{observed['calls_per_s_x32']:,.0f} |",
        f"| ratio | {ratio['p50_us']:.2f} | {ratio['calls_per_s_x32']:.2f} |",
        "",
    ]
