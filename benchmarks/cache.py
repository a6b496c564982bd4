"""The result cache: the classic batches of squares, and how keys spread over servers.

    python -m benchmarks.cache [--quick] [--broker URL]

**Batches.** ``services/squares.py`` pretends that a square costs a millisecond.
One client calls ``squares.square(n)`` for random ``n`` in 0..5000, in ten
successive batches of 2,000 calls, and prints each batch's time: the first
batches mostly miss, later ones mostly hit as the cache learns the 5,001
possible answers. Then the p50 of one call, cached (a hit) against uncached
(``square_uncached``, the same work never cached). The worker is ``rpc run``
with two private Memcached servers.

**Key distribution.** 100,000 keys ``user:N`` over four servers: by first letter
(every key starts with ``u``), by md5 modulo 4, and by the rendezvous hash our
client uses; then how many keys move when one of the four servers is lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pymemcache.client.rendezvous import RendezvousHash

from benchmarks import harness
from rpc import ClusterProxy
from rpc.cache.servers import LocalMemcached

SERVICE = "services.squares:Squares"
QUEUE = "rpc-squares"
SERVERS = [f"server{i}" for i in range(4)]


@dataclasses.dataclass(frozen=True)
class CachePlan:
    batches: int
    calls: int
    domain: int
    latency_calls: int
    keys: int


FULL = CachePlan(batches=10, calls=2000, domain=5000, latency_calls=2000, keys=100_000)
QUICK = CachePlan(batches=3, calls=200, domain=5000, latency_calls=200, keys=10_000)


# -- key distribution ------------------------------------------------------------


def by_first_letter(key: str) -> str:
    """The naive split: a to f, g to m, n to s, t to z."""
    letter = key[0].lower()
    if letter < "g":
        return SERVERS[0]
    if letter < "n":
        return SERVERS[1]
    if letter < "t":
        return SERVERS[2]
    return SERVERS[3]


def by_md5(key: str, servers: list[str] = SERVERS) -> str:
    return servers[hashlib.md5(key.encode()).digest()[-1] % len(servers)]


def by_rendezvous(servers: list[str] = SERVERS) -> Callable[[str], str]:
    """Our client's choice: pymemcache's rendezvous hash over the servers."""
    ring = RendezvousHash(list(servers))
    return lambda key: str(ring.get_node(key))


def distribution(count: int) -> dict[str, Any]:
    """Share of ``count`` keys per server for each scheme, and keys moved on a loss."""
    keys = [f"user:{n}" for n in range(count)]
    schemes = {
        "first letter": by_first_letter,
        "md5 mod 4": by_md5,
        "rendezvous (our client)": by_rendezvous(),
    }
    shares = {}
    for name, scheme in schemes.items():
        counts = dict.fromkeys(SERVERS, 0)
        for key in keys:
            counts[scheme(key)] += 1
        shares[name] = {server: counts[server] / count for server in SERVERS}
    three = SERVERS[:3]
    after_md5 = {key: by_md5(key, three) for key in keys}
    before_rv, after_rv = by_rendezvous(), by_rendezvous(three)
    moved = {
        "md5 mod 4": sum(by_md5(key) != after_md5[key] for key in keys) / count,
        "rendezvous (our client)": sum(before_rv(k) != after_rv(k) for k in keys)
        / count,
    }
    return {"keys": count, "shares": shares, "moved_when_server3_is_lost": moved}


# -- the batches -------------------------------------------------------------------


def batches(
    cluster: ClusterProxy, plan: CachePlan, seed: int = 8
) -> tuple[list[float], list[float]]:
    """Seconds of each batch of ``plan.calls`` cached calls over random inputs, and
    the share of each batch's calls that asked a number asked before (a hit, as
    nothing expires or is evicted during the run)."""
    rng = random.Random(seed)
    square = cluster.squares.square
    seconds, repeats = [], []
    asked: set[int] = set()
    for _ in range(plan.batches):
        numbers = [rng.randint(0, plan.domain) for _ in range(plan.calls)]
        again = 0
        started = time.perf_counter()
        for n in numbers:
            square(n)
        seconds.append(time.perf_counter() - started)
        for n in numbers:
            again += n in asked
            asked.add(n)
        repeats.append(again / len(numbers))
    return seconds, repeats


def p50_us(method: Any, numbers: list[int]) -> float:
    latencies = []
    for n in numbers:
        started = time.perf_counter_ns()
        method(n)
        latencies.append(time.perf_counter_ns() - started)
    return statistics.median(latencies) / 1000


def run(broker_url: str, plan: CachePlan = FULL) -> dict[str, Any]:
    """The whole cache benchmark against ``broker_url`` (a private vhost is best)."""
    results: dict[str, Any] = {"distribution": distribution(plan.keys)}
    with LocalMemcached(2, memory_mb=64) as servers:
        env = {"RPC_CACHE_SERVERS": ",".join(servers.addresses)}
        worker = harness.worker_command(SERVICE, broker_url)
        with (
            harness.running([worker], broker_url, QUEUE, env=env),
            ClusterProxy(broker_url, timeout=60, name="bench-cache") as cluster,
        ):
            for n in range(50):  # connections warm, nothing cached that counts
                cluster.squares.square_uncached(n)
            seconds, repeats = batches(cluster, plan)
            learnt = list(range(plan.domain + 1))[: plan.latency_calls]
            for n in learnt:
                cluster.squares.square(n)  # all cached now
            order = random.Random(3).sample(learnt, len(learnt))
            results["batches"] = {
                "calls": plan.calls,
                "domain": plan.domain,
                "seconds": [round(s, 3) for s in seconds],
                "hit_share": [round(r, 3) for r in repeats],
            }
            results["latency"] = {
                "calls": len(order),
                "cached_p50_us": round(p50_us(cluster.squares.square, order), 1),
                "uncached_p50_us": round(
                    p50_us(cluster.squares.square_uncached, order), 1
                ),
            }
    return results


def markdown(results: dict[str, Any]) -> list[str]:
    """The tables of the cache benchmark, as README and results.md show them."""
    lines: list[str] = []
    if "batches" in results:
        batch = results["batches"]
        lines += [
            f"**Result cache** ({len(batch['seconds'])} successive batches of "
            f"{batch['calls']:,} calls of `squares.square(n)`, n random in "
            f"0..{batch['domain']}, a 1 ms handler; seconds per batch)",
            "",
            "| "
            + " | ".join(str(i) for i in range(1, len(batch["seconds"]) + 1))
            + " |",
            "|" + "---:|" * len(batch["seconds"]),
            "| " + " | ".join(f"{s:.2f}" for s in batch["seconds"]) + " |",
            "| " + " | ".join(f"{h:.0%}" for h in batch.get("hit_share", [])) + " |",
            "",
            "(second row: the share of each batch's calls that were hits)",
            "",
        ]
        latency = results["latency"]
        lines += [
            "| one call | p50 µs |",
            "|---|---:|",
            f"| cached (a hit) | {latency['cached_p50_us']:,.0f} |",
            f"| uncached | {latency['uncached_p50_us']:,.0f} |",
            "",
        ]
    spread = results["distribution"]
    lines += [
        f"**Key distribution** ({spread['keys']:,} keys `user:N` over four servers, "
        "share per server)",
        "",
        "| scheme | " + " | ".join(SERVERS) + " | keys moved when server3 is lost |",
        "|---|" + "---:|" * (len(SERVERS) + 1),
    ]
    moved = spread["moved_when_server3_is_lost"]
    for scheme, shares in spread["shares"].items():
        gone = f"{moved[scheme]:.0%}" if scheme in moved else "—"
        cells = " | ".join(f"{shares[server]:.1%}" for server in SERVERS)
        lines.append(f"| {scheme} | {cells} | {gone} |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache")
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument(
        "--broker",
        default=os.environ.get("RPC_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
    )
    options = parser.parse_args(argv)
    with harness.private_vhost(options.broker) as url:
        results = run(url, QUICK if options.quick else FULL)
    print("\n".join(markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
