"""What a new user meets first: the quick start, CI's command, docker compose.

These files are not code anybody imports, so nothing else would notice them drift.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import yaml

from rpc.service import import_service
from tests.readme import README

ROOT = README.parent
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && "
    ".venv/bin/rpc broker ensure && .venv/bin/rpc cache ensure && "
    ".venv/bin/python -m pytest"
)


def section(name: str) -> str:
    """The text of ``<!-- section: name -->`` up to the next section marker."""
    text = README.read_text()
    start = text.index(f"<!-- section: {name} -->")
    end = text.find("<!-- section:", start + 1)
    return text[start : end if end != -1 else None]


def indented_commands(text: str) -> list[str]:
    """The shell commands shown as indented lines (Markdown code by indentation)."""
    return [line.strip() for line in text.splitlines() if line.startswith("    ")]


def test_the_quick_start_is_near_the_top_with_exactly_two_commands():
    text = README.read_text()
    assert text.index("<!-- section: quick-start -->") < 1000
    demo, tests = indented_commands(section("quick-start"))
    assert demo.startswith("python3 -m venv .venv && ")
    assert demo.endswith(".venv/bin/python -m services.demo")
    assert tests == TEST_COMMAND


def test_ci_runs_the_readme_test_command_word_for_word():
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()
    assert TEST_COMMAND in indented_commands(section("development"))


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(
        (ROOT / "docker-compose.yml").read_text()
    )["services"]
    return services


def memcached_services() -> dict[str, Any]:
    return {
        name: service
        for name, service in compose().items()
        if str(service.get("image", "")).startswith("memcached:")
    }


def test_compose_has_a_healthy_rabbitmq_that_the_services_wait_for():
    services = compose()
    rabbitmq = services.pop("rabbitmq")
    assert rabbitmq["image"] == "rabbitmq:3-management"
    assert rabbitmq["healthcheck"]["test"]
    for name in memcached_services():
        del services[name]
    for name, service in services.items():
        condition = service["depends_on"]["rabbitmq"]["condition"]
        assert condition == "service_healthy", name


def test_compose_scales_the_examples_and_runs_a_one_shot_demo():
    services = compose()
    for name in ("greeter", "frontend", "compute"):
        assert services[name]["deploy"]["replicas"] >= 2, name
    demo = services["demo"]
    assert demo["restart"] == "no"
    assert "rpc call" in " ".join(demo["command"])
    gateway = services["gateway"]
    assert gateway["command"][:2] == ["rpc", "gateway"]
    assert "8000:8000" in gateway["ports"]
    # A gateway with neither refuses to start: it would serve nobody.
    assert "--allow-anonymous" in gateway["command"] or "--tokens-file" in " ".join(
        gateway["command"]
    )


def test_compose_runs_two_memcached_servers_that_the_cached_example_uses():
    servers = memcached_services()
    assert len(servers) == 2
    squares = compose()["squares"]
    assert squares["command"] == ["rpc", "run", "services.squares:Squares"]
    configured = squares["environment"]["RPC_CACHE_SERVERS"].split(",")
    assert sorted(configured) == sorted(f"{name}:11211" for name in servers)
    for name in servers:
        assert name in squares["depends_on"]


def test_every_service_compose_runs_can_be_imported():
    targets = [
        target
        for service in compose().values()
        if service.get("command", [])[:2] == ["rpc", "run"]
        for target in service["command"][2:]
        if re.fullmatch(r"[\w.]+:\w+", target)
    ]
    assert len(targets) >= 9
    for target in targets:
        import_service(target)


def test_the_pytest_plugin_is_registered_through_an_entry_point():
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert [p.value for p in plugins if p.name == "rpc.testing.pytest_plugin"] == [
        "rpc.testing.pytest_plugin"
    ]
