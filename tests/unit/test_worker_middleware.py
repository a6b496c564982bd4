"""The runner's middleware in memory: every call, cast and event runs through it."""

from __future__ import annotations

from rpc import Config, Middleware, ServiceRunner
from tests.behaviour import MiddlewareBehaviour, Noted, Recording


class TestMiddlewareInMemory(MiddlewareBehaviour):
    pass


def test_config_middleware_comes_after_the_given_ones(memory_broker_url):
    config = Config(
        broker_url=memory_broker_url,
        middleware=("tests.behaviour:Recording",),
    )
    given = Middleware()
    runner = ServiceRunner([Noted], config, middleware=[given])
    assert runner.middleware[0] is given
    assert isinstance(runner.middleware[1], Recording)


def test_no_middleware_means_no_chain(memory_broker_url):
    runner = ServiceRunner([Noted], Config(broker_url=memory_broker_url))
    assert runner._invoker._chain is None
    remove = runner.observe(lambda *args: None)
    assert runner._invoker._chain is not None
    remove()
    assert runner._invoker._chain is None
