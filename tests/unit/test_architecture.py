"""The import rules of docs/architecture.md, read from the source of ``rpc/``.

Each rule keeps one layer from leaning on the inside of another, so a module can be
rewritten behind its facade without touching its users.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rpc"

#: The wire contract and its codecs: the bottom layer.
PURE = ("rpc.protocol", "rpc.serialization", "rpc.errors", "rpc.wire")
RUNTIME = ("rpc.transport", "rpc.worker", "rpc.proxy", "rpc.async_proxy")
#: Kombu's in-process transports and our emulation of RabbitMQ on top of them.
IN_MEMORY = ("rpc.memory", "kombu.transport.virtual", "kombu.transport.memory")
PROXIES = ("rpc.proxy", "rpc.async_proxy", "rpc.calls", "rpc.pending", "rpc.scatter")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


NAMES = {module_name(path) for path in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[tuple[str, str]]:
    """``(module, name)`` for every import in ``path``; name is "" for ``import x``."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[tuple[str, str]] = set()
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add((base, alias.name))
                # ``from rpc import memory`` imports the module rpc.memory.
                submodule = f"{base}.{alias.name}"
                if submodule in NAMES or not within(base, ("rpc",)):
                    found.add((submodule, ""))
    return found


MODULES = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def offenders(modules: dict[str, set[tuple[str, str]]], forbidden) -> list[str]:
    return sorted(
        f"{module} imports {target}{'.' + name if name else ''}"
        for module, found in modules.items()
        for target, name in found
        if forbidden(module, target, name)
    )


def test_the_source_tree_is_read():
    # The rules below would pass on nothing: make sure they see the real modules.
    assert {"rpc.protocol", "rpc.transport", "rpc.worker", "rpc.proxy"} <= set(MODULES)
    assert ("rpc.transport", "") in MODULES["rpc.proxy"] or any(
        target == "rpc.transport" for target, _ in MODULES["rpc.proxy"]
    )


def wire_contract_imports_runtime(module: str, target: str, name: str) -> bool:
    return within(module, PURE) and within(target, RUNTIME)


def in_memory_outside_drivers(module: str, target: str, name: str) -> bool:
    allowed = ("rpc.memory", "rpc.transport.drivers")
    return within(target, IN_MEMORY) and not within(module, allowed)


def worker_inside_transport(module: str, target: str, name: str) -> bool:
    inner = target.startswith("rpc.transport.") and target != "rpc.transport"
    return within(module, ("rpc.worker",)) and inner


def proxy_imports_worker(module: str, target: str, name: str) -> bool:
    return within(module, PROXIES) and within(target, ("rpc.worker",))


def toolkit_uses_internals(module: str, target: str, name: str) -> bool:
    if not within(module, ("rpc.testing",)) or within(target, ("rpc.testing",)):
        return False
    inner = target.startswith(("rpc.transport.", "rpc.worker."))
    return inner or name.startswith("_")


def pymemcache_outside_its_store(module: str, target: str, name: str) -> bool:
    return within(target, ("pymemcache",)) and module != "rpc.cache.memcached"


def cache_reaches_into_the_runtime(module: str, target: str, name: str) -> bool:
    inner = ("rpc.worker", "rpc.transport", "kombu", "amqp")
    return within(module, ("rpc.cache",)) and within(target, inner)


RULES = {
    "the wire contract imports no runtime layer": wire_contract_imports_runtime,
    "only the drivers import the in-memory transport": in_memory_outside_drivers,
    "the worker sees only the transport facade": worker_inside_transport,
    "proxies never import the worker": proxy_imports_worker,
    "rpc.testing uses public facades only": toolkit_uses_internals,
    "only the Memcached store imports pymemcache": pymemcache_outside_its_store,
    "the result cache is a middleware, not part of the worker": (
        cache_reaches_into_the_runtime
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_import_rule(rule):
    assert not offenders(MODULES, RULES[rule])


@pytest.mark.parametrize(
    ("rule", "module", "target", "name"),
    [
        ("the wire contract imports no runtime layer", "rpc.wire", "rpc.transport", ""),
        (
            "only the drivers import the in-memory transport",
            "rpc.proxy",
            "rpc",
            "memory",
        ),
        (
            "the worker sees only the transport facade",
            "rpc.worker",
            "rpc.transport.link",
            "",
        ),
        ("proxies never import the worker", "rpc.proxy", "rpc.worker", "ServiceRunner"),
        (
            "rpc.testing uses public facades only",
            "rpc.testing.hooks",
            "rpc.service",
            "_x",
        ),
        (
            "only the Memcached store imports pymemcache",
            "rpc.cache.middleware",
            "pymemcache.client.hash",
            "",
        ),
        (
            "the result cache is a middleware, not part of the worker",
            "rpc.cache.middleware",
            "rpc.worker",
            "ServiceRunner",
        ),
    ],
)
def test_each_rule_catches_a_forbidden_import(rule, module, target, name):
    found = {(target, name)}
    if name:
        found.add((f"{target}.{name}", ""))
    caught = offenders({module: found}, RULES[rule])
    assert caught and all(line.startswith(f"{module} imports ") for line in caught)
