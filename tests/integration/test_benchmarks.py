"""The benchmark suite's quick mode runs end to end against the real broker.

Only the shape of what it writes is checked: timings belong to the suite, not to tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_module(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m ...`` of this checkout; it must succeed."""
    paths = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    completed = subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


@pytest.mark.timeout(600)
def test_quick_benchmark_writes_json_markdown_and_plot(
    base_broker_url: str, tmp_path: Path
) -> None:
    completed = run_module(
        "benchmarks",
        "--quick",
        "--no-progress",
        "--broker",
        base_broker_url,
        "--output",
        str(tmp_path),
        timeout=540,
    )

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["plan"] == "quick"
    assert results["meta"]["machine"]["cores"] >= 1
    for side in ("framework", "baseline", "ratio"):
        assert set(results["latency"][side]) == {
            "p50_us",
            "p90_us",
            "p99_us",
            "calls_per_s",
        }
        assert all(value > 0 for value in results["latency"][side].values())
    grid = {(row["processes"], row["in_flight"]) for row in results["throughput"]}
    assert grid == {(p, n) for p in (1, 2) for n in (1, 8, 32, 128)}
    for row in results["throughput"]:
        assert row["framework_calls_per_s"] > 0 and row["baseline_calls_per_s"] > 0
        assert row["ratio"] == pytest.approx(
            row["framework_calls_per_s"] / row["baseline_calls_per_s"], rel=1e-6
        )
    assert [row["bytes"] for row in results["payload"]] == [1024, 65536, 1048576]
    for kind in ("cast", "events"):
        assert results[kind]["messages"] > 0
        assert results[kind]["framework_per_s"] > 0 < results[kind]["baseline_per_s"]
    assert results["cpu_scaling"]["speedup"] > 0
    assert set(results["cpu_scaling"]["seconds"]) == {
        "1",
        str(results["cpu_scaling"]["processes"]),
    }
    cost = results["cost"]
    for key in (
        "worker_rss_mb",
        "client_rss_mb",
        "baseline_server_rss_mb",
        "baseline_client_rss_mb",
        "startup_s",
        "baseline_startup_s",
    ):
        assert cost[key] > 0, key
    assert {row["target"] for row in results["targets"]} >= {
        "latency p50, framework/baseline",
        "idle worker resident memory (MiB)",
    }
    assert all(isinstance(row["met"], bool) for row in results["targets"])
    cache = results["cache"]
    assert len(cache["batches"]["seconds"]) == 3
    assert all(seconds > 0 for seconds in cache["batches"]["seconds"])
    assert cache["latency"]["cached_p50_us"] > 0 < cache["latency"]["uncached_p50_us"]
    assert set(cache["distribution"]["shares"]["md5 mod 4"]) == {
        f"server{i}" for i in range(4)
    }

    markdown = (tmp_path / "results.md").read_text()
    assert "| framework |" in markdown and "**Throughput**" in markdown
    assert "**Result cache**" in markdown and "**Key distribution**" in markdown
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The table printed at the end is the one written to disk.
    assert markdown.strip() in completed.stdout


@pytest.mark.timeout(300)
def test_cpu_per_call_probe_prints_both_sides(base_broker_url: str) -> None:
    completed = run_module(
        "benchmarks.cpu",
        "--broker",
        base_broker_url,
        "--calls",
        "300",
        "--repetitions",
        "1",
        timeout=240,
    )
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in completed.stdout.splitlines()
        if line.startswith(("| framework", "| baseline"))
    }
    assert set(rows) == {"framework", "baseline"}
    for cells in rows.values():
        client_us, worker_us, _, calls_per_s = cells
        # Both processes did work for every call, and calls were served.
        assert float(client_us) > 0 and float(worker_us) > 0
        assert float(calls_per_s.replace(",", "")) > 0
