"""The runner's middleware: every call, cast and event runs through it, in memory."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from rpc import Config, Middleware, RemoteError, ServiceRunner, event_handler, rpc
from rpc.middleware import Outcome, ServerCall
from rpc.testing import ServiceCluster, entrypoint_waiter


class Noted:
    name = "noted"

    @rpc
    def hello(self, name: str) -> str:
        return f"hi {name}"

    @event_handler("noted", "said")
    def on_said(self, payload: Any) -> None:
        pass


class Recording(Middleware):
    seen: ClassVar[list[tuple[str, str, Any]]] = []

    def before_handler(self, call: ServerCall) -> Outcome | None:
        argument = call.context.request.args[0] if call.context.request.args else None
        if argument == "cached":
            return Outcome(result="from the cache")
        if argument == "denied":
            raise PermissionError("not you")
        return None

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        self.seen.append((call.kind, call.method, outcome.result))


@pytest.fixture
def noted(memory_broker_url):
    Recording.seen = []
    config = Config(broker_url=memory_broker_url, default_timeout=30)
    with ServiceCluster(config=config) as cluster:
        runner = ServiceRunner([Noted], config, middleware=[Recording()])
        cluster.runners.append(runner)
        runner.start()
        yield cluster, runner


def test_calls_casts_and_events_run_through_the_middleware(noted):
    cluster, runner = noted
    assert cluster.proxy.noted.hello("ada") == "hi ada"
    with entrypoint_waiter(runner, "noted", "hello"):
        cluster.proxy.noted.hello.cast("bob")
    with entrypoint_waiter(runner, "noted", "on_said"):
        cluster.proxy.dispatch("noted", "said", "x")
    assert Recording.seen == [
        ("call", "hello", "hi ada"),
        ("cast", "hello", "hi bob"),
        ("event", "on_said", None),
    ]


def test_a_middleware_answers_or_rejects_in_place_of_the_handler(noted):
    cluster, _ = noted
    assert cluster.proxy.noted.hello("cached") == "from the cache"
    with pytest.raises(RemoteError, match="not you"):
        cluster.proxy.noted.hello("denied")


def test_config_middleware_comes_after_the_given_ones(memory_broker_url):
    config = Config(
        broker_url=memory_broker_url,
        middleware=(f"{__name__}:Recording",),
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
