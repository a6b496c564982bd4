"""Integration tests talk to the real RabbitMQ at RPC_BROKER_URL, one vhost per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from rpc.config import DEFAULT_BROKER_URL


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_broker_url() -> str:
    return os.environ.get("RPC_BROKER_URL", DEFAULT_BROKER_URL)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


@pytest.fixture
def broker_url(base_broker_url: str) -> Iterator[str]:
    """A URL to a fresh vhost of the real broker, deleted after the test."""
    if shutil.which("rabbitmqctl") is None:
        # A remote broker: isolation comes from the unique names every test uses.
        yield base_broker_url
        return
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    parts = urlsplit(base_broker_url)
    user = parts.username or "guest"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    try:
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", vhost)
