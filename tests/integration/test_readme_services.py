"""The examples of the README's "Writing and calling services" section run as shown."""

from __future__ import annotations

import contextlib
import io

import pytest

from rpc import Config, ServiceRunner
from services.greeter import Frontend, Greeter
from tests.readme import code_blocks

SECTION = "Writing and calling services"
DEFAULT_URL = "amqp://guest:guest@localhost:5672//"


@pytest.fixture
def greeters(broker_url):
    with ServiceRunner([Greeter, Frontend], Config(broker_url=broker_url)) as runner:
        yield runner


def test_the_service_example_is_the_shipped_one():
    service_code = code_blocks(SECTION)[0]
    namespace: dict[str, object] = {}
    exec(compile(service_code, "README.md", "exec"), namespace)
    assert namespace["Greeter"]().hello("x") == Greeter().hello("x")  # type: ignore[operator]


def test_the_python_client_example_runs(broker_url, greeters):
    client_code = next(b for b in code_blocks(SECTION) if "ClusterProxy(" in b)
    assert DEFAULT_URL in client_code
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(
            compile(client_code.replace(DEFAULT_URL, broker_url), "README.md", "exec"),
            {},
        )
    lines = output.getvalue().splitlines()
    assert lines[:4] == [
        "Hello, world!",
        "HELLO, ADA!",
        "Hello, later!",
        "Hello, fast!",
    ]
    assert lines[4].startswith("InvalidArgumentsError ")


def test_the_configuration_example_loads(tmp_path):
    yaml_block = code_blocks(SECTION, "yaml")[0]
    path = tmp_path / "rpc.yaml"
    path.write_text(yaml_block)
    config = Config.load(path, environ={})
    # It lists every setting with its default (tests/unit/test_readme_config.py).
    assert config == Config()
