"""The README's "Middleware" examples run as shown, on RabbitMQ."""

from __future__ import annotations

from tests.unit.test_readme_middleware import run_middleware_example


def test_the_slow_call_example_logs_only_the_slow_call(broker_url, caplog):
    (line,) = run_middleware_example(broker_url, caplog)
    assert line.startswith("sleepy.nap took 0.2")
    assert line.endswith("s (ok)")
