"""The examples of the README's "asyncio and the HTTP gateway" section run as shown."""

from __future__ import annotations

import contextlib
import io

import pytest

from rpc import Config, ServiceRunner
from rpc.service import ServiceDefinition
from services.concierge import Concierge
from services.greeter import Greeter
from tests.readme import code_blocks

SECTION = "asyncio and the HTTP gateway"
DEFAULT_URL = "amqp://guest:guest@localhost:5672//"


@pytest.fixture
def running(broker_url):
    config = Config(broker_url=broker_url)
    with ServiceRunner([Greeter, Concierge], config) as runner:
        yield runner


def test_the_async_service_example_matches_the_shipped_one():
    namespace: dict[str, object] = {}
    exec(compile(code_blocks(SECTION)[0], "README.md", "exec"), namespace)
    shown = ServiceDefinition.from_class(namespace["Concierge"]).describe()  # type: ignore[arg-type]
    assert shown == ServiceDefinition.from_class(Concierge).describe()


def test_the_asyncio_client_example_runs(broker_url, running):
    client_code = next(b for b in code_blocks(SECTION) if "AsyncClusterProxy(" in b)
    assert DEFAULT_URL in client_code
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(
            compile(client_code.replace(DEFAULT_URL, broker_url), "README.md", "exec"),
            {"__name__": "readme"},
        )
    assert output.getvalue().splitlines() == [
        "Hello, async!",
        "100 Hello, user99!",
        "['Hello, a!', 'Hello, b!']",
        "timed out: call concierge.pause got no reply before its deadline",
        "['concierge', 'greeter']",
    ]
