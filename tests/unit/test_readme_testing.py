"""The examples of the README's "Testing your services" section, run as shown.

The test blocks go into a test file of their own and run under pytest with the
plugin, in memory; tests/integration/test_readme_testing.py runs them on RabbitMQ.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from tests.readme import code_blocks

SECTION = "Testing your services"
PLUGIN = ("-p", "rpc.testing.pytest_plugin", "-p", "no:cacheprovider")


def readme_test_blocks() -> list[str]:
    """The README's blocks that define tests, in order."""
    return [block for block in code_blocks(SECTION) if "def test_" in block]


def conftest_block() -> str:
    return next(
        block for block in code_blocks(SECTION) if "def rpc_broker_url" in block
    )


def run_readme_tests(pytester: pytest.Pytester, *args: str) -> None:
    """Write every test block to a file of its own, run them, and expect all to pass."""
    blocks = readme_test_blocks()
    files = {f"test_readme_{n}": block for n, block in enumerate(blocks)}
    pytester.makepyfile(**files)
    result = pytester.runpytest(*PLUGIN, *args)
    expected = sum(len(re.findall(r"^def test_", b, re.MULTILINE)) for b in blocks)
    assert expected >= 8
    result.assert_outcomes(passed=expected)


def test_the_test_examples_pass_in_memory(pytester: pytest.Pytester):
    run_readme_tests(pytester)


def test_the_examples_fail_when_the_services_do_not_behave(pytester: pytest.Pytester):
    # The examples test something: a wrong expectation in one is caught.
    block = readme_test_blocks()[0].replace('"HELLO, ADA!"', '"hello, ada!"')
    pytester.makepyfile(test_wrong=block)
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(failed=1, passed=1)


def test_the_cluster_script_prints_the_welcome():
    script = next(b for b in code_blocks(SECTION) if "with ServiceCluster()" in b)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(script, "README.md", "exec"), {})
    assert output.getvalue() == "HELLO, ADA!\n"


def test_the_conftest_example_is_valid_python():
    compile(conftest_block(), "conftest.py", "exec")
