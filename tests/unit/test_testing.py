"""rpc.testing itself: worker_factory, hooks, waiters, replacements, clusters."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from unittest import mock

import pytest

from rpc import (
    CallContext,
    CurrentCall,
    Dependency,
    MethodNotFoundError,
    RemoteError,
    RpcProxy,
    ServiceDefinitionError,
    Settings,
    UnknownServiceError,
    current_call,
    rpc,
)
from rpc.testing import (
    ServiceCluster,
    entrypoint_hook,
    entrypoint_waiter,
    mock_dependency,
    replace_dependencies,
    reset_memory_broker,
    restrict_entrypoints,
    worker_factory,
)
from services.greeter import Frontend, Greeter


class Clock:
    """Something a dependency provides, with a fixed set of methods."""

    def now(self) -> float:
        return 0.0


class ClockDependency(Dependency):
    def get_dependency(self, runtime, context) -> Clock:
        return Clock()


class Untyped(Dependency):
    def get_dependency(self, runtime, context):
        return object()


class Failing:
    name = "failing"
    greeter = RpcProxy("greeter")
    settings = Settings()
    call = CurrentCall()
    clock = ClockDependency()

    @rpc
    def explode(self, message: str) -> None:
        self._deeper(message)

    def _deeper(self, message: str) -> None:
        raise KeyError(message)  # the traceback points here

    @rpc
    def context(self) -> list:
        call = current_call()
        assert call is not None and call is self.call
        return [call.service, call.request.method, call.remaining() is not None]

    @rpc
    def greet(self, name: str) -> str:
        return str(self.greeter.hello(name))

    @rpc
    def setting(self, key: str) -> object:
        return self.settings.get(key)


# -- worker_factory ----------------------------------------------------------------


def test_worker_factory_mocks_every_dependency():
    worker = worker_factory(Failing)
    assert isinstance(worker, Failing)
    for attr in ("greeter", "settings", "call", "clock"):
        assert isinstance(getattr(worker, attr), mock.NonCallableMock), attr
    worker.greeter.hello.return_value = "hi"
    assert worker.greet("ada") == "hi"
    worker.greeter.hello.assert_called_once_with("ada")


def test_worker_factory_uses_the_objects_given():
    worker = worker_factory(Frontend, greeter=mock.Mock(**{"hello.return_value": "x"}))
    assert worker.welcome("ada") == "X"
    plain = worker_factory(Failing, settings={"greeting": "Hi"})
    assert plain.setting("greeting") == "Hi"


def test_worker_factory_rejects_names_that_are_no_dependency():
    with pytest.raises(ServiceDefinitionError, match="no dependencies named gretter"):
        worker_factory(Frontend, gretter=object())


def test_mocks_are_specced_from_what_the_dependency_provides():
    clock = mock_dependency(ClockDependency())
    clock.now.return_value = 5.0
    assert clock.now() == 5.0
    with pytest.raises(AttributeError):
        clock.tomorrow  # noqa: B018 (Clock has no such method)
    call = mock_dependency(CurrentCall())
    with pytest.raises(AttributeError):
        call.no_such_thing  # noqa: B018
    assert isinstance(call, CallContext)  # autospec keeps isinstance
    assert isinstance(mock_dependency(Settings()), dict)
    # A proxy makes up methods on the fly, so its mock must accept any name.
    assert mock_dependency(RpcProxy("x")).anything.call_async is not None
    assert isinstance(mock_dependency(Untyped()), mock.MagicMock)


# -- entrypoint_hook -----------------------------------------------------------------


@pytest.fixture
def failing_runner(rpc_cluster: ServiceCluster):
    return rpc_cluster.start(Failing, Greeter)


def test_hook_returns_the_result_with_a_call_context(failing_runner):
    hook = entrypoint_hook(failing_runner, "failing", "context")
    assert hook() == ["failing", "context", True]


def test_hook_injects_real_dependencies(failing_runner):
    with entrypoint_hook(failing_runner, "failing", "greet") as greet:
        assert greet("ada") == "Hello, ada!"  # over the in-memory broker


def test_hook_raises_the_original_exception_with_its_traceback(failing_runner):
    hook = entrypoint_hook(failing_runner, "failing", "explode")
    with pytest.raises(KeyError) as caught:
        hook("boom")
    frames = traceback.extract_tb(caught.value.__traceback__)
    assert [f.name for f in frames][-2:] == ["explode", "_deeper"]
    assert frames[-1].filename == __file__
    assert frames[-1].line == "raise KeyError(message)  # the traceback points here"


def test_hook_checks_arguments_and_names(failing_runner):
    hook = entrypoint_hook(failing_runner, "failing", "explode")
    with pytest.raises(TypeError, match="missing a required argument"):
        hook()
    with pytest.raises(ValueError, match="no entrypoint 'nope'"):
        entrypoint_hook(failing_runner, "failing", "nope")
    with pytest.raises(ValueError, match="serves no 'other'"):
        entrypoint_hook(failing_runner, "other", "explode")


def test_a_remote_failure_carries_the_service_traceback_text(
    failing_runner, rpc_cluster
):
    with pytest.raises(RemoteError) as caught:
        rpc_cluster.proxy.failing.explode("boom")
    assert caught.value.exc_type == "KeyError"
    assert "in _deeper" in caught.value.traceback
    assert "raise KeyError(message)" in caught.value.traceback


# -- entrypoint_waiter -----------------------------------------------------------------


def test_waiter_sees_the_result_of_a_call_made_over_the_broker(
    failing_runner, rpc_cluster
):
    with entrypoint_waiter(failing_runner, "greeter", "hello") as run:
        future = rpc_cluster.proxy.greeter.hello.call_async("ada")
    assert run.done
    assert run.result == "Hello, ada!"
    assert run.exception is None
    assert future.result() == "Hello, ada!"


def test_waiter_re_raises_a_failure_with_its_original_traceback(
    failing_runner, rpc_cluster
):
    with entrypoint_waiter(failing_runner, "failing", "explode") as run:
        future = rpc_cluster.proxy.failing.explode.call_async("boom")
    assert isinstance(run.exception, KeyError)
    with pytest.raises(KeyError) as caught:
        run.result  # noqa: B018
    assert traceback.extract_tb(caught.value.__traceback__)[-1].name == "_deeper"
    assert isinstance(future.exception(), RemoteError)


def test_waiter_waits_for_the_run_it_is_told_to(failing_runner, rpc_cluster):
    hello = rpc_cluster.proxy.greeter.hello
    with entrypoint_waiter(
        failing_runner,
        "greeter",
        "hello",
        until=lambda run: run.result == "Hello, second!",
    ) as run:
        hello.call_async("first")
        hello.call_async("second")
    assert run.result == "Hello, second!"


def test_waiter_times_out_when_the_handler_never_runs(failing_runner):
    with (
        pytest.raises(TimeoutError, match=r"greeter\.hello did not run within"),
        entrypoint_waiter(failing_runner, "greeter", "hello", timeout=0.2),
    ):
        pass


def test_waiter_ignores_runs_before_it_started_and_stops_observing(
    failing_runner, rpc_cluster
):
    assert rpc_cluster.proxy.greeter.hello("early") == "Hello, early!"
    with entrypoint_waiter(failing_runner, "greeter", "hello") as run:
        assert not run.done
        with pytest.raises(RuntimeError, match="has not run yet"):
            run.result  # noqa: B018
        rpc_cluster.proxy.greeter.hello("late")
    assert run.result == "Hello, late!"
    assert failing_runner._invoker.middleware == ()


# -- replace_dependencies and restrict_entrypoints ----------------------------


def test_replace_dependencies_returns_mocks_and_takes_objects(rpc_cluster):
    runner = rpc_cluster.runner(Failing)
    greeter, clock = replace_dependencies(
        runner, "failing", "greeter", "clock", settings={"a": 1}
    )
    greeter.hello.return_value = "mocked"
    runner.start()
    assert rpc_cluster.proxy.failing.greet("ada") == "mocked"
    assert rpc_cluster.proxy.failing.setting("a") == 1
    assert isinstance(clock, Clock)
    assert replace_dependencies(runner, "failing", call=None) is None


def test_replace_dependencies_rejects_unknown_or_doubled_names(rpc_cluster):
    runner = rpc_cluster.runner(Failing)
    with pytest.raises(ServiceDefinitionError, match="gretter"):
        replace_dependencies(runner, "failing", "gretter")
    with pytest.raises(ValueError, match="both mocked and given"):
        replace_dependencies(runner, "failing", "greeter", greeter=None)
    with pytest.raises(ValueError, match="serves no 'nobody'"):
        replace_dependencies(runner, "nobody", "greeter")


def test_restrict_entrypoints(rpc_cluster):
    runner = rpc_cluster.runner(Failing)
    restrict_entrypoints(runner, "failing", "context")
    runner.start()
    assert rpc_cluster.proxy.failing.context()[0] == "failing"
    with pytest.raises(MethodNotFoundError):
        rpc_cluster.proxy.failing.explode("x")
    with pytest.raises(ValueError, match="no entrypoints"):
        restrict_entrypoints(runner, "failing", "missing")


# -- ServiceCluster and the memory broker --------------------------------------


def test_cluster_stops_everything_it_started():
    with ServiceCluster() as cluster:
        first = cluster.start(Greeter)
        cluster.runner(Frontend)  # never started: stopping it must not fail
        assert cluster.proxy.greeter.hello("x") == "Hello, x!"
        proxy = cluster.proxy
    assert cluster.runners == []
    assert not first.connected
    assert not proxy.started


def test_reset_forgets_every_queue(memory_broker_url):
    with ServiceCluster(memory_broker_url, default_timeout=30) as cluster:
        cluster.start(Greeter).stop()
        # Its queue outlives the worker, as a durable queue does on RabbitMQ.
        future = cluster.proxy.greeter.hello.call_async("x")
        reset_memory_broker()
        with pytest.raises(UnknownServiceError):
            cluster.proxy.greeter.hello("x")
        assert not future.done()


def test_settings_reach_the_runner_config():
    with ServiceCluster(max_workers=3, extra={"k": "v"}) as cluster:
        runner = cluster.runner(Greeter, max_workers=2)
        assert cluster.config.max_workers == 3
        assert runner.config.max_workers == 2
        assert isinstance(runner.config.extra, Mapping)
        assert runner.config.extra == {"k": "v"}
