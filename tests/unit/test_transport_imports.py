"""Import rules of the transport: who may reach Kombu's in-memory transport, and
which modules stay below the transport."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rpc

PACKAGE = Path(rpc.__file__).parent
IN_MEMORY = ("rpc.memory", "kombu.transport.memory", "kombu.transport.virtual")
#: The memory driver, and the routing it completes Kombu's memory transport with.
DRIVERS = {"transport/drivers.py", "memory.py"}
BELOW_TRANSPORT = [
    "wire/__init__.py",
    "wire/frames.py",
    "wire/encoding.py",
    "wire/decoding.py",
    "protocol.py",
    "serialization.py",
    "errors.py",
]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: relative(path)
)
def test_only_the_drivers_reach_the_in_memory_transport(path):
    name = relative(path)
    if name in DRIVERS:
        return
    reached = {n for n in imported(path) if n.startswith(IN_MEMORY)}
    assert not reached, f"{name} imports {sorted(reached)}"


@pytest.mark.parametrize("name", BELOW_TRANSPORT)
def test_framing_and_protocol_import_no_transport_worker_or_proxy(name):
    above = ("rpc.transport", "rpc.worker", "rpc.proxy", "rpc.async_proxy")
    reached = {n for n in imported(PACKAGE / name) if n.startswith(above)}
    assert not reached, f"{name} imports {sorted(reached)}"
