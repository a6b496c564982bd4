"""Memory of a client after a few calls: ``python -m benchmarks.probe KIND URL``."""

from __future__ import annotations

import json
import sys

import psutil

from benchmarks.baseline import BaselineClient
from benchmarks.workloads import BASELINE_QUEUE
from rpc import ClusterProxy

CALLS = 100


def main() -> None:
    kind, url = sys.argv[1], sys.argv[2]
    if kind == "framework":
        with ClusterProxy(url, timeout=60) as cluster:
            for _ in range(CALLS):
                cluster.bench.noop()
            rss = psutil.Process().memory_info().rss
    else:
        client = BaselineClient(url)
        try:
            client.run(BASELINE_QUEUE, CALLS, timeout=60)
            rss = psutil.Process().memory_info().rss
        finally:
            client.close()
    print(json.dumps({"kind": kind, "rss_mb": rss / 2**20}))


if __name__ == "__main__":
    main()
