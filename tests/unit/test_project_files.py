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


def compose(profile: str | None = None) -> dict[str, Any]:
    """The services of docker-compose.yml in ``profile`` (None: the default ones)."""
    services: dict[str, Any] = yaml.safe_load(
        (ROOT / "docker-compose.yml").read_text()
    )["services"]
    return {
        name: service
        for name, service in services.items()
        if (profile in service.get("profiles", [])) or (
            profile is None and not service.get("profiles")
        )
    }


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


def test_compose_up_starts_what_the_readme_says_and_the_pi_mesh_on_request():
    services = compose()
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {
        "rabbitmq", "gateway", "greeter", "frontend", "compute", "concierge",
        "shop", "cache", "demo", "memcached-1", "memcached-2", "squares", "prometheus",
    }  # fmt: skip
    targets = " ".join(" ".join(services[name].get("command", [])) for name in default)
    for service in ("Shop", "Stock", "Cache", "Concierge"):
        assert f":{service}" in targets, service
    pi = compose("pi")
    assert set(pi) == {"bitsource", "always_yes", "judge", "pythagoras", "tally", "pi"}
    assert all(service["profiles"] == ["pi"] for service in pi.values())
    readme = (ROOT / "README.md").read_text()
    assert "`docker compose --profile pi up`" in readme
    said = readme[readme.index("With Docker, `docker compose up` starts exactly") :]
    said = said[: said.index("\n\n")]
    for name in (
        "greeter", "frontend", "compute", "concierge", "shop", "stock", "squares",
    ):  # fmt: skip
        assert f"`{name}`" in said, name
    assert "three `cache`" in said and "gateway" in said and "`demo`" in said
    assert "two Memcached servers" in said


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
def test_the_cluster_profile_runs_quorum_services_on_all_three_nodes():
    services = compose("cluster")
    nodes = [name for name in services if name.startswith("rabbit")]
    assert len(nodes) == 3
    conf = " ".join(services[nodes[0]]["command"])
    assert "cluster_partition_handling = pause_minority" in conf
    for node in nodes:
        assert services[node]["hostname"] == node
        assert services[node]["healthcheck"]["test"]
    workers = {name: s for name, s in services.items() if name not in nodes}
    assert any(s["command"][:2] == ["rpc", "run"] for s in workers.values())
    for name, service in workers.items():
        urls = service["environment"]["RPC_BROKER_URL"].split(";")
        assert sorted(url.split("@")[1].split(":")[0] for url in urls) == nodes
        assert service["environment"]["RPC_QUEUE_TYPE"] == "quorum"
        assert {n: c["condition"] for n, c in service["depends_on"].items()} == {
            node: "service_healthy" for node in nodes
        }, name


def test_every_service_compose_runs_can_be_imported():
    targets = [
        target
        for profile in (None, "cluster", "pi")
        for service in compose(profile).values()
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


def test_the_readme_says_how_long_the_test_command_takes():
    readme = (ROOT / "README.md").read_text()
    development = readme[readme.index("## Development") :]
    assert "about 15 to 20 minutes on 2 cores" in development
    quick_start = readme[readme.index("## Quick start") : readme.index("## Writing")]
    assert "about 15 to 20 minutes on 2 cores" in quick_start


def test_compose_runs_a_prometheus_that_scrapes_every_daemon():
    services = compose()
    prometheus = services["prometheus"]
    mount = "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in prometheus["volumes"]
    scraped = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        name: config["port"]
        for job in scraped["scrape_configs"]
        for config in job["dns_sd_configs"]
        for name in config["names"]
    }
    daemons = [
        name
        for name, service in services.items()
        if service.get("command", [])[:2] in (["rpc", "run"], ["rpc", "gateway"])
    ]
    assert "gateway" in daemons
    for name in daemons:
        assert targets.get(name) == 9100, name
    app = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-app"]
    assert app["environment"]["RPC_METRICS_PORT"] == "9100"
    assert app["environment"]["RPC_METRICS_HOST"] == "0.0.0.0"
