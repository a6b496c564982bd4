"""Results on disk: a JSON file, a Markdown table and a plot of throughput."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import cache as cache_benchmark

#: (name, where the value is, goal, True if higher is better)
TARGETS = (
    ("latency p50, framework/baseline", ("latency", "ratio", "p50_us"), 1.3, False),
    (
        "throughput at 32 in flight, framework/baseline",
        ("throughput", 1, 32),
        0.8,
        True,
    ),
    (
        "asyncio client latency p50, asyncio/threaded",
        ("latency", "asyncio_ratio", "p50_us"),
        1.15,
        False,
    ),
    (
        "asyncio client throughput at 32 in flight, asyncio/threaded",
        ("throughput_asyncio", 1, 32),
        1.0,
        True,
    ),
    ("CPU scaling with 2 processes (speedup)", ("cpu_scaling", "speedup"), 1.8, True),
    ("idle worker resident memory (MiB)", ("cost", "worker_rss_mb"), 40.0, False),
)


def _lookup(results: dict[str, Any], path: tuple[Any, ...]) -> float | None:
    if path[0] in ("throughput", "throughput_asyncio"):
        key = "ratio" if path[0] == "throughput" else "asyncio_ratio"
        for row in results.get("throughput", []):
            if row["processes"] == path[1] and row["in_flight"] == path[2]:
                return float(row[key]) if key in row else None
        return None
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it was met."""
    rows = []
    for name, path, goal, higher in TARGETS:
        value = _lookup(results, path)
        met = value is not None and (value >= goal if higher else value <= goal)
        rows.append(
            {
                "target": name,
                "goal": (">= " if higher else "<= ") + f"{goal:g}",
                "value": value,
                "met": met,
            }
        )
    return rows


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The tables the README shows."""
    meta = results["meta"]
    lines = [
        f"Run of {meta['date']} ({results['plan']} mode) on {meta['machine']['cores']} "
        f"cores ({meta['machine']['cpu'] or 'unknown CPU'}), Python "
        f"{meta['machine']['python']}, Kombu {meta['machine']['kombu']}, commit "
        f"{meta['commit'] or '?'}; medians of {meta['repetitions']} repetitions "
        f"({meta.get('throughput_repetitions', meta['repetitions'])} for throughput), "
        "ratios are framework/baseline from the same run.",
        "",
    ]
    if "latency" in results:
        lat = results["latency"]
        lines += [
            f"**Latency** ({lat['calls']} sequential no-op calls)",
            "",
            "| | p50 µs | p90 µs | p99 µs | calls/s |",
            "|---|---:|---:|---:|---:|",
        ]
        sides = [("framework", "framework"), ("Kombu baseline", "baseline")]
        if "asyncio" in lat:
            sides.insert(1, ("asyncio client", "asyncio"))
        for label, key in sides:
            row = lat[key]
            lines.append(
                f"| {label} | {_n(row['p50_us'])} | {_n(row['p90_us'])} | "
                f"{_n(row['p99_us'])} | {_n(row['calls_per_s'])} |"
            )
        ratio = lat["ratio"]
        lines.append(
            f"| ratio | {ratio['p50_us']:.2f} | {ratio['p90_us']:.2f} | "
            f"{ratio['p99_us']:.2f} | {ratio['calls_per_s']:.2f} |"
        )
        if "asyncio_ratio" in lat:
            ratio = lat["asyncio_ratio"]
            lines.append(
                f"| asyncio/threaded | {ratio['p50_us']:.2f} | "
                f"{ratio['p90_us']:.2f} | {ratio['p99_us']:.2f} | "
                f"{ratio['calls_per_s']:.2f} |"
            )
        lines.append("")
    if results.get("throughput"):
        calls = results["throughput"][0]["calls"]
        lines += [
            f"**Throughput** ({_n(calls)} no-op calls from one client process)",
            "",
            "| worker processes | in flight | framework calls/s | asyncio calls/s "
            "| baseline calls/s | ratio | asyncio/threaded |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["throughput"]:
            awaited = row.get("asyncio_calls_per_s")
            awaited_ratio = row.get("asyncio_ratio")
            lines.append(
                f"| {row['processes']} | {row['in_flight']} | "
                f"{_n(row['framework_calls_per_s'])} | "
                f"{'n/a' if awaited is None else _n(awaited)} | "
                f"{_n(row['baseline_calls_per_s'])} | "
                f"{row['ratio']:.2f} | "
                f"{'n/a' if awaited_ratio is None else f'{awaited_ratio:.2f}'} |"
            )
        lines.append("")
    if results.get("payload"):
        lines += [
            "**Payload** (echo round trips, one at a time; "
            "MB/s counts both directions)",
            "",
            "| body | calls | framework MB/s | baseline MB/s | ratio |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in results["payload"]:
            lines.append(
                f"| {row['bytes'] // 1024} KiB | {row['calls']} | "
                f"{_n(row['framework_mb_per_s'], 1)} | "
                f"{_n(row['baseline_mb_per_s'], 1)} | "
                f"{row['ratio']:.2f} |"
            )
        lines.append("")
    for extra in ("cast", "events"):
        if results.get(extra):
            row = results[extra]
            lines += [
                f"**{extra.capitalize()}** ({_n(row['messages'])} messages, "
                "published with confirms and consumed)",
                "",
                "| | framework msg/s | baseline msg/s | ratio |",
                "|---|---:|---:|---:|",
                f"| {extra} | {_n(row['framework_per_s'])} | "
                f"{_n(row['baseline_per_s'])} | "
                f"{row['ratio']:.2f} |",
                "",
            ]
    if "cpu_scaling" in results:
        cpu = results["cpu_scaling"]
        lines += [
            f"**CPU scaling** ({cpu['calls']} concurrent "
            f"`compute(count={_n(cpu['count'])})`"
            " calls)",
            "",
            "| worker processes | seconds | speedup |",
            "|---:|---:|---:|",
        ]
        one = cpu["seconds"]["1"]
        for processes, seconds in cpu["seconds"].items():
            lines.append(f"| {processes} | {seconds:.2f} | {one / seconds:.2f} |")
        lines.append("")
    if "cost" in results:
        cost = results["cost"]
        lines += [
            "**Cost**",
            "",
            "| | framework | baseline |",
            "|---|---:|---:|",
            f"| idle server process, RSS MiB | {cost['worker_rss_mb']:.1f} | "
            f"{cost['baseline_server_rss_mb']:.1f} |",
            "| client process after 100 calls, RSS MiB | "
            f"{cost['client_rss_mb']:.1f} | "
            f"{cost['baseline_client_rss_mb']:.1f} |",
            "| start-up until the first call is served, s | "
            f"{cost['startup_s']:.2f} | "
            f"{cost['baseline_startup_s']:.2f} |",
            "",
        ]
    if "cache" in results:
        lines += cache_benchmark.markdown(results["cache"])
    lines += [
        "**Targets**",
        "",
        "| target | goal | measured | met |",
        "|---|---|---:|---|",
    ]
    for row in results["targets"]:
        value = "n/a" if row["value"] is None else f"{row['value']:.2f}"
        lines.append(
            f"| {row['target']} | {row['goal']} | {value} | "
            f"{'yes' if row['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput against calls in flight, framework and baseline, per process count."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=110)
    rows = results["throughput"]
    # One colour per side, one line style per number of worker processes.
    for processes in sorted({row["processes"] for row in rows}):
        mine = [row for row in rows if row["processes"] == processes]
        x = [row["in_flight"] for row in mine]
        label = f"{processes} worker process{'es' if processes > 1 else ''}"
        style = "-" if processes == 1 else "--"
        axes.plot(
            x,
            [r["framework_calls_per_s"] for r in mine],
            "o" + style,
            color="tab:blue",
            label=f"rpc, {label}",
        )
        if all("asyncio_calls_per_s" in r for r in mine):
            axes.plot(
                x,
                [r["asyncio_calls_per_s"] for r in mine],
                "^" + style,
                color="tab:green",
                label=f"rpc asyncio client, {label}",
            )
        axes.plot(
            x,
            [r["baseline_calls_per_s"] for r in mine],
            "s" + style,
            color="tab:orange",
            label=f"Kombu baseline, {label}",
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(
        [row["in_flight"] for row in rows if row["processes"] == rows[0]["processes"]]
    )
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_xlabel("calls in flight (one client process)")
    axes.set_ylabel("no-op calls per second")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    meta = results["meta"]
    axes.set_title(
        f"Throughput, {meta['date'][:10]}, {meta['machine']['cores']} cores",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def write(results: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Write results.json, results.md and throughput.png into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": directory / "results.json",
        "markdown": directory / "results.md",
        "plot": directory / "throughput.png",
    }
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["markdown"].write_text(markdown(results))
    plot(results, paths["plot"])
    return paths
