"""``@timer``: when ticks are due, skipping, every_worker and token timers in memory."""

from __future__ import annotations

import itertools
import threading
import time
from typing import ClassVar

import pytest

from rpc import Config, Middleware, ServiceRunner, rpc, timer
from rpc.middleware import Outcome, ServerCall
from rpc.service import ServiceDefinition
from rpc.testing import ServiceCluster, entrypoint_waiter
from rpc.timer import TimerEntrypoint, next_due
from rpc.worker import topology


def test_the_next_tick_is_the_first_still_ahead():
    assert next_due(10.0, 10.5, 1.0) == 11.0
    # A tick that ran from 10 to 13.2 skips the ticks due at 11, 12 and 13.
    assert next_due(10.0, 13.2, 1.0) == 14.0
    assert next_due(10.0, 11.0, 1.0) == 12.0


def test_timer_checks_its_interval_and_is_described():
    with pytest.raises(ValueError, match="positive"):
        timer(0)

    class Clock:
        name = "clock"

        @timer(2.5, every_worker=True)
        def tick(self) -> None:
            """Keeps time."""

    described = ServiceDefinition.from_class(Clock).describe()
    assert described["methods"] == {}
    assert described["timers"]["tick"] == {
        "signature": "() -> 'None'",
        "doc": "Keeps time.",
        "kind": "timer",
        "interval": 2.5,
        "every_worker": True,
    }
    [handler] = ServiceDefinition.from_class(Clock).other_handlers
    assert handler.entrypoint == TimerEntrypoint("tick", 2.5, True)


class Ticks:
    """What the timers of a test ran: (start, end) per tick."""

    runs: ClassVar[list[tuple[float, float]]] = []
    failures: ClassVar[int] = 0
    lock = threading.Lock()

    @classmethod
    def reset(cls) -> None:
        cls.runs, cls.failures = [], 0


class SlowClock:
    name = "slowclock"

    @timer(0.02, every_worker=True)
    def tick(self) -> None:
        started = time.monotonic()
        time.sleep(0.07)  # over three intervals
        with Ticks.lock:
            Ticks.runs.append((started, time.monotonic()))


class FailingClock:
    name = "failingclock"

    @timer(0.02, every_worker=True)
    def tick(self) -> None:
        with Ticks.lock:
            Ticks.failures += 1
            if Ticks.failures == 1:
                raise RuntimeError("the first tick fails")


class TokenClock:
    name = "tokenclock"

    @timer(0.02)
    def tick(self) -> str:
        return "ticked"

    @rpc
    def ping(self) -> str:
        return "pong"


class Kinds(Middleware):
    seen: ClassVar[list[str]] = []

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        self.seen.append(call.kind)


@pytest.fixture
def config(memory_broker_url):
    Ticks.reset()
    Kinds.seen = []
    return Config(broker_url=memory_broker_url, shutdown_timeout=5)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_tick_still_running_makes_the_next_skipped_not_stacked(config):
    with ServiceRunner([SlowClock], config):
        assert wait_for(lambda: len(Ticks.runs) >= 3)
    runs = sorted(Ticks.runs)
    for (_, ended), (started, _) in itertools.pairwise(runs):
        assert started >= ended


def test_a_tick_that_raises_is_logged_and_the_timer_goes_on(config, caplog):
    with (
        caplog.at_level("WARNING", logger="rpc.timer"),
        ServiceRunner([FailingClock], config),
    ):
        assert wait_for(lambda: Ticks.failures >= 3)
    assert "failingclock.tick: timer tick failed: the first tick fails" in caplog.text


def test_every_worker_timers_fire_on_each_runner_through_the_middleware(config):
    first = ServiceRunner([SlowClock], config, middleware=[Kinds()])
    second = ServiceRunner([SlowClock], config)
    with first, second:
        with entrypoint_waiter(first, "slowclock", "tick"):
            pass
        with entrypoint_waiter(second, "slowclock", "tick"):
            pass
    assert set(Kinds.seen) == {"timer"}


def test_a_token_timer_fires_on_the_runner_holding_the_token(config):
    with ServiceRunner([TokenClock], config) as runner:
        for _ in range(3):
            with entrypoint_waiter(runner, "tokenclock", "tick") as run:
                pass
            assert run.result == "ticked"


def test_a_held_token_takes_no_handler_slot(config, monkeypatch):
    prefetches: list[int] = []
    declare = topology.declare_worker

    def recording(channel, *, prefetch: int, queue_type: str) -> None:
        prefetches.append(prefetch)
        declare(channel, prefetch=prefetch, queue_type=queue_type)

    monkeypatch.setattr(topology, "declare_worker", recording)
    with ServiceRunner([TokenClock], config.replace(max_workers=1)) as runner:
        with entrypoint_waiter(runner, "tokenclock", "tick"):
            pass
        with ServiceCluster(config=config) as cluster:
            assert cluster.proxy.tokenclock.ping() == "pong"
    assert runner.prefetch == 1
    assert prefetches == [2]
