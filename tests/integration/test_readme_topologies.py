"""The examples of the README's "Messaging topologies" section run as shown."""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from urllib.parse import unquote, urlsplit

import pytest

from rpc import ClusterProxy, Config, ServiceRunner
from rpc.service import ServiceDefinition
from services.compute import Compute
from services.shop import Shop, Stock
from tests.integration.daemons import daemons
from tests.readme import code_blocks

SECTION = "Messaging topologies"
DEFAULT_URL = "amqp://guest:guest@localhost:5672//"


def run_block(code: str, broker_url: str) -> list[str]:
    assert DEFAULT_URL in code
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code.replace(DEFAULT_URL, broker_url), "README.md", "exec"), {})
    return output.getvalue().splitlines()


def wait_for_shard_workers(broker_url: str, service: str, count: int) -> None:
    """Wait until ``count`` workers have bound their queues to the service's ring."""
    vhost = unquote(urlsplit(broker_url).path[1:]) or "/"
    deadline = time.monotonic() + 60
    while True:
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_bindings", "-p", vhost, "source_name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        bound = listing.count(f"rpc.shard.{service}")
        if bound >= count:
            return
        assert time.monotonic() < deadline, f"{bound} of {count} workers bound"
        time.sleep(0.2)


def test_the_service_example_is_the_shipped_one():
    namespace: dict[str, object] = {}
    exec(compile(code_blocks(SECTION)[0], "README.md", "exec"), namespace)
    for shipped in (Shop, Stock):
        shown = ServiceDefinition.from_class(namespace[shipped.__name__])  # type: ignore[arg-type]
        assert shown.describe() == ServiceDefinition.from_class(shipped).describe()


@pytest.fixture
def config(broker_url):
    return Config(broker_url=broker_url, default_timeout=20)


def test_the_client_example_runs_against_sharded_daemons(broker_url, config):
    client = next(b for b in code_blocks(SECTION) if "cluster.cache" in b)
    with (
        ServiceRunner([Shop, Stock], config),
        daemons(broker_url, ["services.cache:Cache"], count=3),
        ClusterProxy(config=config) as cluster,
    ):
        wait_for_shard_workers(broker_url, "cache", 3)
        lines = run_block(client, broker_url)
        # Three separate processes each hold a share of the keys.
        sizes = {cluster.cache.size() for _ in range(30)}
    assert lines[:2] == ["[2, 1, 0]", "True"]
    assert lines[2] == "{'n': 7}"
    assert len(sizes) > 1 and all(size < 100 for size in sizes)


def test_the_map_example_runs(broker_url, config):
    code = next(b for b in code_blocks(SECTION) if "compute.map" in b)
    with ServiceRunner([Compute], config), ServiceRunner([Compute], config):
        lines = run_block(code, broker_url)
    assert 0 < int(lines[0]) <= 8 * 100_000 * 100
    assert lines[1] == str([Compute().compute(10, 1)] * 2)
    assert lines[2] == "['int', 'RemoteError', 'int']"
