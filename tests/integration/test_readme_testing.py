"""The README's testing examples, on RabbitMQ through the conftest it shows."""

from __future__ import annotations

import pytest

from tests.unit.test_readme_testing import PLUGIN, conftest_block, run_readme_tests

WHERE = """
def test_where(rpc_broker_url, rpc_base_broker_url):
    assert rpc_broker_url.startswith("amqp://")
    assert rpc_broker_url != rpc_base_broker_url  # a vhost of its own
"""


def test_the_test_examples_pass_on_rabbitmq(
    pytester: pytest.Pytester, rpc_base_broker_url: str
):
    pytester.makeconftest(conftest_block())
    run_readme_tests(pytester, "--rpc-broker-url", rpc_base_broker_url)
    pytester.makepyfile(test_where=WHERE)
    where = pytester.runpytest(
        *PLUGIN, "--rpc-broker-url", rpc_base_broker_url, "test_where.py"
    )
    where.assert_outcomes(passed=1)
