"""``python -m benchmarks [--quick]``: run every workload and write the results."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from tqdm import tqdm

from benchmarks import harness, observability, report, workloads

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure rpc against a hand-written Kombu baseline.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run (under a minute) to check it works",
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("RPC_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
        help="AMQP URL; a private vhost is made on it when rabbitmqctl is at hand",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="directory for the results (default benchmarks/results, or "
        "benchmarks/results/quick with --quick)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    options = parser.parse_args(argv)
    plan = workloads.QUICK if options.quick else workloads.FULL
    output = options.output or (RESULTS / "quick" if options.quick else RESULTS)

    started = datetime.datetime.now(datetime.timezone.utc)
    bar = tqdm(
        total=plan.steps(), disable=options.no_progress, unit="step", file=sys.stderr
    )

    def progress(step: str) -> None:
        bar.set_description(step)
        bar.update(1)

    try:
        with harness.private_vhost(options.broker) as url:
            results = workloads.run_all(url, plan, progress)
            results["observability"] = observability.overhead(url, plan, progress)
    finally:
        bar.close()
    results["meta"] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(
            (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1
        ),
        "machine": harness.machine(),
        "commit": harness.git_commit(),
        "repetitions": plan.repetitions,
        "throughput_repetitions": plan.throughput_repetitions,
    }
    results["targets"] = report.check_targets(results)
    paths = report.write(results, output)
    print(report.markdown(results))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
