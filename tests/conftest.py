"""Markers and fixtures every test may use; nothing broker-specific."""

from __future__ import annotations

import uuid

import pytest

# The toolkit's plugin is also registered through its pytest11 entry point once rpc
# is installed; this covers a bare checkout. Same name, so it never loads twice.
pytest_plugins = ("rpc.testing.pytest_plugin", "pytester")


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A service-name-safe name no other test uses (the memory transport is global)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:32]
    return f"{base}-{uuid.uuid4().hex[:8]}"
