"""The pytest plugin, run on test files of its own as a service author would write."""

from __future__ import annotations

import pytest

PLUGIN = ("-p", "rpc.testing.pytest_plugin")

SERVICE_TESTS = """
from rpc import rpc
from rpc.testing import entrypoint_hook


class Divider:
    name = "divider"

    @rpc
    def divide(self, a: int, b: int) -> float:
        return self._divide(a, b)

    def _divide(self, a, b):
        return a / b  # where it fails


def test_divides(runner_factory, cluster_proxy):
    runner_factory(Divider).start()
    assert cluster_proxy.divider.divide(6, 3) == 2


def test_divides_by_zero(rpc_cluster):
    runner = rpc_cluster.start(Divider)
    entrypoint_hook(runner, "divider", "divide")(1, 0)
"""


def test_a_failure_in_a_service_shows_its_own_traceback(pytester: pytest.Pytester):
    pytester.makepyfile(test_divider=SERVICE_TESTS)
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    # pytest prints the service's own frames, down to the failing line.
    result.stdout.fnmatch_lines(
        [
            "*def _divide(self, a, b):",
            ">*return a / b  # where it fails",
            "E*ZeroDivisionError: division by zero",
        ]
    )


FIXTURE_TESTS = """
from rpc.testing import MEMORY_BROKER_URL


def test_urls(rpc_base_broker_url, rpc_broker_url, memory_broker_url, rpc_config):
    assert rpc_broker_url == memory_broker_url == MEMORY_BROKER_URL
    assert rpc_config.broker_url == MEMORY_BROKER_URL
    print("BASE", rpc_base_broker_url)
"""


def test_the_broker_comes_from_the_option_else_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    pytester.makepyfile(test_urls=FIXTURE_TESTS)
    monkeypatch.setenv("RPC_BROKER_URL", "amqp://env-host//")
    from_env = pytester.runpytest(*PLUGIN, "-s", "-p", "no:cacheprovider")
    from_env.assert_outcomes(passed=1)
    from_env.stdout.fnmatch_lines(["*BASE amqp://env-host//"])
    from_option = pytester.runpytest(
        *PLUGIN, "-s", "-p", "no:cacheprovider", "--rpc-broker-url", "amqp://opt//"
    )
    from_option.assert_outcomes(passed=1)
    from_option.stdout.fnmatch_lines(["*BASE amqp://opt//"])


def test_the_plugin_lists_its_options(pytester: pytest.Pytester):
    result = pytester.runpytest(*PLUGIN, "--help")
    result.stdout.fnmatch_lines(["*--rpc-broker-url*", "*--rpc-management-url*"])
