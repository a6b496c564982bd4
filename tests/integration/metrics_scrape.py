"""Reading a /metrics page back: free ports, scrapes, samples by name and labels."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the page has no such sample (never counted)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_for_metrics(
    port: int,
    check: Callable[[Samples], bool] = lambda found: True,
    timeout: float = 30,
) -> Samples:
    """Scrape until ``check`` holds; the last scrape's samples."""
    deadline = time.monotonic() + timeout
    last: Samples = {}
    while True:
        try:
            last = samples(scrape(port))
            if check(last):
                return last
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never settled; last scrape: {last}")
        time.sleep(0.1)


def matching(found: Samples, name: str) -> Mapping[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in found.items() if n == name}
