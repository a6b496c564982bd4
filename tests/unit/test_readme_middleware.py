"""The README's "Middleware" examples run as shown, in memory."""

from __future__ import annotations

import logging

from tests.readme import code_blocks

SECTION = "Middleware"
README_URL = "amqp://guest:guest@localhost:5672//"


def run_middleware_example(broker_url: str, caplog) -> list[str]:
    """Run both blocks with ``broker_url``; the slow-call lines they logged."""
    middleware, usage = code_blocks(SECTION)
    assert README_URL in usage
    namespace: dict[str, object] = {}
    with caplog.at_level(logging.WARNING, logger="slow_calls"):
        exec(compile(middleware, "README.md", "exec"), namespace)
        exec(
            compile(usage.replace(README_URL, broker_url), "README.md", "exec"),
            namespace,
        )
    return [r.getMessage() for r in caplog.records if r.name == "slow_calls"]


def test_the_slow_call_example_logs_only_the_slow_call(memory_broker_url, caplog):
    (line,) = run_middleware_example(memory_broker_url, caplog)
    assert line.startswith("sleepy.nap took 0.2")
    assert line.endswith("s (ok)")
