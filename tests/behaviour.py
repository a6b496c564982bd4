"""Behaviour of the example services (and of casts that fail), written once and run
on two transports.

Each class takes a ``cluster`` fixture (an ``rpc.testing.ServiceCluster``):
tests/unit/ subclasses them in memory, tests/integration/ on RabbitMQ. The names
carry no ``Test`` prefix, so pytest collects only the subclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple
from unittest.mock import ANY

import kombu
import orjson
import pytest

from rpc import (
    AsyncClusterProxy,
    CallTimeoutError,
    ClientCall,
    ClusterProxy,
    InvalidArgumentsError,
    MethodNotFoundError,
    Middleware,
    Outcome,
    RemoteError,
    ServerCall,
    ServiceRunner,
    UnknownServiceError,
    event_handler,
    protocol,
    rpc,
)
from rpc.memory import transport_for
from rpc.testing import (
    ServiceCluster,
    entrypoint_waiter,
    replace_dependencies,
    restrict_entrypoints,
)
from services.cache import Cache
from services.compute import MAX_COUNT, Compute
from services.concierge import Concierge
from services.greeter import Frontend, Greeter
from services.pi.always_yes import AlwaysYes
from services.pi.bitsource import BitSource
from services.pi.judge import Judge
from services.pi.pythagoras import Pythagoras
from services.pi.tally import Tally
from services.shop import Shop, Stock

#: Long enough that a missing "unknown service" answer would show as a timeout.
CALL_TIMEOUT = 20.0


class GreeterBehaviour:
    def test_hello_greets_by_name(self, cluster: ServiceCluster):
        cluster.start(Greeter)
        assert cluster.proxy.greeter.hello("ada") == "Hello, ada!"
        assert cluster.proxy.greeter.hello(name="bob") == "Hello, bob!"

    def test_frontend_calls_the_greeter(self, cluster: ServiceCluster):
        cluster.start(Greeter, Frontend)
        assert cluster.proxy.frontend.welcome("ada") == "HELLO, ADA!"

    def test_frontend_and_greeter_in_separate_runners(self, cluster: ServiceCluster):
        cluster.start(Greeter)
        cluster.start(Frontend)
        futures = [
            cluster.proxy.frontend.welcome.call_async(f"user{n}") for n in range(20)
        ]
        assert [f.result() for f in futures] == [f"HELLO, USER{n}!" for n in range(20)]

    def test_frontend_without_greeter_reports_the_unknown_service(
        self, cluster: ServiceCluster
    ):
        cluster.start(Frontend)
        welcome = cluster.proxy.frontend.welcome.with_options(timeout=CALL_TIMEOUT)
        with pytest.raises(RemoteError) as caught:
            welcome("ada")
        assert caught.value.exc_type == "UnknownServiceError"
        assert "greeter" in caught.value.message

    def test_unknown_service_fails_at_once_not_by_timeout(
        self, cluster: ServiceCluster
    ):
        cluster.start(Greeter)
        nobody = cluster.proxy.nobody.with_options(timeout=CALL_TIMEOUT)
        with pytest.raises(UnknownServiceError):
            nobody.hello("ada")

    def test_unknown_method_and_bad_arguments_get_error_replies(
        self, cluster: ServiceCluster
    ):
        cluster.start(Greeter)
        with pytest.raises(MethodNotFoundError):
            cluster.proxy.greeter.goodbye("ada")
        with pytest.raises(InvalidArgumentsError):
            cluster.proxy.greeter.hello()
        assert cluster.proxy.greeter.hello("still") == "Hello, still!"

    def test_frontend_with_a_replaced_greeter(self, cluster: ServiceCluster):
        runner = cluster.runner(Frontend)
        greeter = replace_dependencies(runner, "frontend", "greeter")
        greeter.hello.return_value = "hi there"
        runner.start()
        assert cluster.proxy.frontend.welcome("ada") == "HI THERE"
        greeter.hello.assert_called_once_with("ada")

    def test_waiting_for_a_handler_started_elsewhere(self, cluster: ServiceCluster):
        runner = cluster.start(Greeter)
        with entrypoint_waiter(runner, "greeter", "hello", timeout=30) as run:
            future = cluster.proxy.greeter.hello.call_async("waiter")
        assert run.result == "Hello, waiter!"
        assert run.context is not None
        assert run.context.request.args == ["waiter"]
        assert future.result() == "Hello, waiter!"


class ComputeBehaviour:
    def test_sum_is_that_of_the_seeded_random_integers(self, cluster: ServiceCluster):
        cluster.start(Compute)
        rng = random.Random(7)
        expected = sum(rng.randint(1, 100) for _ in range(1000))
        assert cluster.proxy.compute.compute(count=1000, seed=7) == expected
        assert cluster.proxy.compute.ping() == "pong"

    def test_out_of_range_count_is_a_remote_value_error(self, cluster: ServiceCluster):
        cluster.start(Compute)
        with pytest.raises(RemoteError) as caught:
            cluster.proxy.compute.compute(count=MAX_COUNT + 1)
        assert caught.value.exc_type == "ValueError"
        assert "count must be between" in caught.value.message
        # The traceback text points at the line in the service that raised.
        assert 'raise ValueError(f"count must be between' in caught.value.traceback
        assert "compute.py" in caught.value.traceback

    def test_restricted_entrypoints_are_not_served(self, cluster: ServiceCluster):
        runner = cluster.runner(Compute)
        restrict_entrypoints(runner, "compute", "ping")
        runner.start()
        assert cluster.proxy.compute.ping() == "pong"
        with pytest.raises(MethodNotFoundError):
            cluster.proxy.compute.compute(count=1)

    def test_a_second_runner_serves_once_the_first_stops(self, cluster: ServiceCluster):
        first = cluster.start(Compute)
        second = cluster.start(Compute)
        assert cluster.proxy.compute.ping() == "pong"
        first.stop()
        futures = [cluster.proxy.compute.ping.call_async() for _ in range(10)]
        assert [f.result() for f in futures] == ["pong"] * 10
        # A reply leaves before its handler's bookkeeping ends: allow it a moment.
        deadline = time.monotonic() + 10
        while second.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.in_flight == 0


class ShopBehaviour:
    def test_an_order_reaches_the_stock_service_as_an_event(
        self, cluster: ServiceCluster
    ):
        stock = cluster.start(Stock)
        cluster.start(Shop)
        item = f"apple-{uuid.uuid4().hex[:8]}"  # counts live in the process
        with entrypoint_waiter(stock, "stock", "on_order", timeout=30) as run:
            cluster.proxy.shop.order(item, quantity=3)
        assert run.exception is None
        assert run.context is not None
        assert run.context.request.args == [{"item": item, "quantity": 3}]
        assert cluster.proxy.stock.sold(item) == 3

    def test_a_failing_event_handler_is_seen_by_the_waiter(
        self, cluster: ServiceCluster
    ):
        stock = cluster.start(Stock)
        cluster.start(Shop)
        with entrypoint_waiter(stock, "stock", "on_order", timeout=30) as run:
            cluster.proxy.shop.order("pear", quantity="many")  # type: ignore[arg-type]
        assert isinstance(run.exception, ValueError)
        with pytest.raises(ValueError, match="many"):
            run.result  # noqa: B018 (re-raises the handler's exception)

    def test_an_order_the_stock_cannot_count_ends_in_its_dead_letter_queue(
        self, cluster: ServiceCluster
    ):
        cluster.start(Stock, delivery_limit=2)
        cluster.start(Shop)
        cluster.proxy.shop.order("plum", quantity="lots")  # type: ignore[arg-type]
        queue = protocol.dead_letter_queue("stock")
        deadline = time.monotonic() + 30
        with kombu.Connection(cluster.broker_url) as connection:
            while (letter := connection.default_channel.basic_get(queue)) is None:
                assert time.monotonic() < deadline, "no dead letter"
                time.sleep(0.05)
        assert orjson.loads(letter.body) == {"item": "plum", "quantity": "lots"}
        assert letter.headers[protocol.HEADER_DEATH_REASON] == "handler-error"
        assert "ValueError" in letter.headers[protocol.HEADER_DEATH_DETAIL]
        assert cluster.proxy.stock.sold("plum") == 0


class ConciergeBehaviour:
    def test_async_handler_calls_the_greeter_concurrently(
        self, cluster: ServiceCluster
    ):
        cluster.start(Greeter, Concierge)
        assert cluster.proxy.concierge.greet_all(["ada", "bob"]) == [
            "Hello, ada!",
            "Hello, bob!",
        ]

    def test_async_handler_errors_come_back_as_remote_errors(
        self, cluster: ServiceCluster
    ):
        cluster.start(Concierge)
        assert cluster.proxy.concierge.pause(0) == 0
        with pytest.raises(RemoteError) as caught:
            cluster.proxy.concierge.pause(-1)
        assert caught.value.exc_type == "ValueError"


class PiMeshBehaviour:
    def test_every_point_gets_one_verdict_through_events_rpc_and_casts(
        self, cluster: ServiceCluster
    ):
        points = 40
        tally = cluster.start(Tally, Pythagoras)
        cluster.start(Judge, AlwaysYes)
        cluster.start(BitSource)
        before = cluster.proxy.tally.estimate()
        counter = itertools.count(1)
        with entrypoint_waiter(
            tally,
            "tally",
            "record",
            timeout=60,
            until=lambda run: next(counter) == points,
        ):
            assert cluster.proxy.bitsource.produce(points) == points
        after = cluster.proxy.tally.estimate()
        assert after["total"] - before["total"] == points
        assert 0 <= after["inside"] - before["inside"] <= points


class Owners:
    """Which runner ran each call, by the ``key`` argument of the call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ran: dict[str, set[str]] = defaultdict(set)

    def watch(self, runner: ServiceRunner) -> ServiceRunner:
        def seen(context, handler, result, error) -> None:
            request = context.request
            key = request.kwargs.get("key", request.args[0] if request.args else None)
            with self._lock:
                self.ran[str(key)].add(runner.instance_id)

        runner.observe(seen)
        return runner

    def of(self, keys: list[str]) -> dict[str, str]:
        """The one runner each key ran on; fails if a key ran on two."""
        with self._lock:
            assert all(len(self.ran[key]) == 1 for key in keys), dict(self.ran)
            owners = {key: next(iter(self.ran[key])) for key in keys}
            self.ran.clear()
        return owners


class CacheBehaviour:
    """The sharded example cache: each key lives with the worker that owns it."""

    def test_every_get_finds_what_its_put_stored(self, cluster: ServiceCluster):
        for _ in range(3):
            cluster.start(Cache)
        keys = [f"{uuid.uuid4().hex}:{n}" for n in range(30)]  # the store is global
        for n, key in enumerate(keys):
            cluster.proxy.cache.put(key, {"n": n})
        assert [cluster.proxy.cache.get(key) for key in keys] == [
            {"n": n} for n in range(30)
        ]
        assert cluster.proxy.cache.get.shard(keys[7])(keys[7]) == {"n": 7}
        assert cluster.proxy.cache.get(key=f"{keys[0]}:missing") is None
        assert cluster.proxy.cache.size() >= 1  # not sharded: any worker answers

    def test_every_call_for_a_key_runs_on_the_worker_that_owns_it(
        self, cluster: ServiceCluster
    ):
        owners = Owners()
        runners = [owners.watch(cluster.start(Cache)) for _ in range(3)]
        keys = [f"{uuid.uuid4().hex}:{n}" for n in range(60)]
        for key in keys:
            cluster.proxy.cache.put(key, 1)  # through the shared queue, forwarded
            cluster.proxy.cache.get(key=key)
            cluster.proxy.cache.get.shard(key)(key)  # straight to the owner
        first = owners.of(keys)
        assert len(set(first.values())) > 1  # the keys are spread over the workers
        assert set(first.values()) <= {runner.instance_id for runner in runners}
        futures = [cluster.proxy.cache.get.call_async(key) for key in keys]
        assert [future.result() for future in futures] == [1] * len(keys)
        assert owners.of(keys) == first  # same keys, same workers

    def test_a_worker_that_joins_takes_keys_only_from_the_others(
        self, cluster: ServiceCluster
    ):
        owners = Owners()
        for _ in range(3):
            owners.watch(cluster.start(Cache))
        keys = [f"{uuid.uuid4().hex}:{n}" for n in range(120)]
        for key in keys:
            cluster.proxy.cache.get(key)
        before = owners.of(keys)
        newcomer = owners.watch(cluster.start(Cache)).instance_id
        for key in keys:
            cluster.proxy.cache.get(key)
        after = owners.of(keys)
        moved = [key for key in keys if after[key] != before[key]]
        assert moved  # about a quarter of them
        assert all(after[key] == newcomer for key in moved)

    def test_a_service_without_sharding_refuses_sharded_calls(
        self, cluster: ServiceCluster
    ):
        cluster.start(Greeter)
        hello = cluster.proxy.greeter.hello.with_options(timeout=CALL_TIMEOUT)
        with pytest.raises(UnknownServiceError):
            hello.shard("ada")("ada")


# -- casts whose handler raises ------------------------------------------------------

#: Values whose cast fails on every run while they are in it.
BROKEN: set[str] = set()
_runs_of: dict[str, int] = defaultdict(int)
_runs_lock = threading.Lock()


def _take(value: str, failures: int) -> str:
    """Fail the first ``failures`` runs of ``value`` (every run while it is broken)."""
    with _runs_lock:
        _runs_of[value] += 1
        fails = value in BROKEN or _runs_of[value] <= failures
    if fails:
        raise ValueError(f"cannot take {value}")
    return value


class Jobs:
    """Casts that fail as often as the caller says before they succeed."""

    name = "jobs"

    @rpc
    def take(self, value: str, failures: int = 0) -> str:
        return _take(value, failures)

    @rpc
    async def take_async(self, value: str, failures: int = 0) -> str:
        return _take(value, failures)


class ShardedJobs:
    """:class:`Jobs` sharded by the value: each value's runs belong to one worker."""

    name = "sharded_jobs"

    @rpc(shard_by="value")
    def take(self, value: str, failures: int = 0) -> str:
        return _take(value, failures)


class Run(NamedTuple):
    """One run of a handler, as the runner's observer saw it."""

    delivery_count: int
    redelivered: bool
    worker: str
    succeeded: bool


class Runs:
    """Every run of the watched runners' handlers, by their first argument."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._runs: dict[str, list[Run]] = defaultdict(list)

    def watch(self, runner: ServiceRunner) -> ServiceRunner:
        def seen(context, handler, result, error) -> None:
            run = Run(
                context.request.delivery_count,
                context.redelivered,
                runner.instance_id,
                error is None,
            )
            with self._lock:
                self._runs[str(context.request.args[0])].append(run)
                self._lock.notify_all()

        runner.observe(seen)
        return runner

    def wait(self, value: str, count: int, timeout: float = 30) -> list[Run]:
        """The runs of ``value`` once there are ``count`` (fewer after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._runs[value]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return list(self._runs[value])


def take_dead_letters(
    broker_url: str, service: str, count: int, timeout: float = 30
) -> list[kombu.Message]:
    """Take messages from ``service``'s dead-letter queue: ``count``, or what came."""
    found: list[kombu.Message] = []
    deadline = time.monotonic() + timeout
    queue = protocol.dead_letter_queue(service)
    with kombu.Connection(broker_url) as connection:
        channel = connection.default_channel
        while len(found) < count:
            message = channel.basic_get(queue, no_ack=True)
            if message is not None:
                found.append(message)
            elif time.monotonic() < deadline:
                time.sleep(0.02)
            else:
                break
    return found


def unique(label: str) -> str:
    """A value no other test uses: runs are counted per value, process-wide."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


class FailingCastBehaviour:
    """A cast's handler that raises runs again, then its cast is dead-lettered."""

    LIMIT = 3

    def start(self, cluster: ServiceCluster, service: type = Jobs) -> Runs:
        runs = Runs()
        runs.watch(cluster.start(service, delivery_limit=self.LIMIT))
        return runs

    @pytest.mark.parametrize("method", ["take", "take_async"])
    def test_a_cast_that_fails_twice_succeeds_on_its_third_delivery(
        self, cluster: ServiceCluster, method: str
    ):
        runs = self.start(cluster)
        value = unique("flaky")
        getattr(cluster.proxy.jobs, method).cast(value, failures=2)
        # Each run is a new delivery, and the handler is told so.
        assert runs.wait(value, 3) == [
            Run(1, False, ANY, False),
            Run(2, True, ANY, False),
            Run(3, True, ANY, True),
        ]
        assert take_dead_letters(cluster.broker_url, "jobs", 1, timeout=0) == []

    @pytest.mark.parametrize("method", ["take", "take_async"])
    def test_a_cast_that_always_fails_is_dead_lettered_and_the_others_flow(
        self, cluster: ServiceCluster, method: str
    ):
        runs = self.start(cluster)
        cast = getattr(cluster.proxy.jobs, method).cast
        bad = unique("bad")
        cast(bad, failures=1000)
        healthy = [unique(f"healthy{n}") for n in range(10)]
        for value in healthy:
            cast(value)
        (letter,) = take_dead_letters(cluster.broker_url, "jobs", 1)
        headers = letter.headers
        assert orjson.loads(letter.body) == {
            "args": [bad],
            "kwargs": {"failures": 1000},
        }
        assert headers[protocol.HEADER_DEATH_REASON] == "handler-error"
        assert headers[protocol.HEADER_DEATH_DETAIL] == f"ValueError: cannot take {bad}"
        assert headers[protocol.HEADER_METHOD] == method
        assert headers[protocol.HEADER_DELIVERY_COUNT] == self.LIMIT
        assert headers[protocol.HEADER_ORIGIN_QUEUE] == protocol.service_queue("jobs")
        assert letter.properties["delivery_mode"] == 2
        # Exactly delivery_limit runs: the dead letter went after the last one.
        assert [run.delivery_count for run in runs.wait(bad, self.LIMIT)] == [1, 2, 3]
        for value in healthy:
            assert [run.succeeded for run in runs.wait(value, 1)] == [True]
        assert take_dead_letters(cluster.broker_url, "jobs", 1, timeout=0) == []

    def test_a_failing_call_gets_its_error_once_and_is_not_kept(
        self, cluster: ServiceCluster
    ):
        runs = self.start(cluster)
        value = unique("call")
        with pytest.raises(RemoteError) as caught:
            cluster.proxy.jobs.take(value, failures=1)
        assert caught.value.exc_type == "ValueError"
        after = unique("after")
        cluster.proxy.jobs.take.cast(after, failures=1)
        # The cast behind it ran twice (its retry went to the back of the queue):
        # a retry of the call would have run by then.
        assert len(runs.wait(after, 2)) == 2
        assert runs.wait(value, 1) == [Run(1, False, ANY, False)]
        assert take_dead_letters(cluster.broker_url, "jobs", 1, timeout=0) == []

    def test_a_sharded_cast_runs_again_on_the_owner_of_its_key(
        self, cluster: ServiceCluster
    ):
        runs = Runs()
        for _ in range(2):
            runs.watch(cluster.start(ShardedJobs, delivery_limit=self.LIMIT))
        flaky = [unique(f"flaky{n}") for n in range(16)]
        for value in flaky:
            cluster.proxy.sharded_jobs.take.cast(value, failures=1)
        bad = unique("bad")
        cluster.proxy.sharded_jobs.take.shard(bad).cast(bad, failures=self.LIMIT)
        (letter,) = take_dead_letters(cluster.broker_url, "sharded_jobs", 1)
        assert letter.headers[protocol.HEADER_DEATH_REASON] == "handler-error"
        assert letter.headers[protocol.HEADER_SHARD_KEY] == bad
        workers = set()
        for value in [*flaky, bad]:
            seen = runs.wait(value, 2)
            assert len({run.worker for run in seen}) == 1, seen  # always its owner
            workers |= {run.worker for run in seen}
        assert len(runs.wait(bad, self.LIMIT)) == self.LIMIT
        assert len(workers) == 2  # the keys were spread over both workers


# -- client middleware ---------------------------------------------------------------


class RecordingSends(Middleware):
    """Tags every send with a header, as a tracer would, and records both hooks."""

    #: Every instance made, for the ones ``Config.middleware`` makes by import path.
    instances: ClassVar[list[RecordingSends]] = []

    def __init__(self) -> None:
        self.before: list[ClientCall] = []
        self.after: list[tuple[ClientCall, Outcome]] = []
        self._changed = threading.Condition()
        RecordingSends.instances.append(self)

    def before_send(self, call: ClientCall) -> None:
        call.headers["x-trace"] = f"trace-{call.method}"
        call.headers[protocol.HEADER_METHOD] = "not-the-method"  # ours must win
        with self._changed:
            self.before.append(call)

    def after_send(self, call: ClientCall, outcome: Outcome) -> None:
        with self._changed:
            self.after.append((call, outcome))
            self._changed.notify_all()

    def outcomes(self, count: int, timeout: float = 30) -> list[tuple[str, object]]:
        """``(kind service.method, result or error type)`` once ``count`` are in."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.after) >= count, timeout)
            return [
                (
                    f"{call.kind} {call.service}.{call.method}",
                    outcome.result if outcome.ok else type(outcome.error),
                )
                for call, outcome in self.after
            ]


class Refusing(Middleware):
    def before_send(self, call: ClientCall) -> None:
        raise PermissionError(f"{call.kind} {call.method} refused")


class Probe:
    """A queue bound as a service's would be, read with plain Kombu: the messages a
    worker would get, headers and all."""

    def __init__(self, channel: Any, service: str) -> None:
        self.channel = channel
        self.service = service
        self.queue = f"probe-{service}"
        channel.exchange_declare(
            exchange=protocol.RPC_EXCHANGE,
            type="topic",
            durable=True,
            auto_delete=False,
        )
        channel.exchange_declare(
            exchange=protocol.EVENTS_EXCHANGE,
            type="topic",
            durable=True,
            auto_delete=False,
        )
        channel.queue_declare(queue=self.queue, durable=False, auto_delete=False)
        channel.queue_bind(
            queue=self.queue,
            exchange=protocol.RPC_EXCHANGE,
            routing_key=protocol.service_binding(service),
        )
        channel.queue_bind(
            queue=self.queue,
            exchange=protocol.EVENTS_EXCHANGE,
            routing_key=protocol.event_binding(service, "#"),
        )

    def take(self, timeout: float = 30) -> kombu.Message:
        deadline = time.monotonic() + timeout
        while (message := self.channel.basic_get(self.queue, no_ack=True)) is None:
            assert time.monotonic() < deadline, "nothing arrived"
            time.sleep(0.02)
        return message

    def empty(self) -> bool:
        return self.channel.basic_get(self.queue, no_ack=True) is None

    def reply(self, request: kombu.Message, result: object) -> None:
        """Answer ``request`` as a worker would."""
        message = self.channel.prepare_message(
            orjson.dumps({"result": result, "error": None}),
            content_type="application/json",
            properties={"correlation_id": request.properties["correlation_id"]},
        )
        self.channel.basic_publish(
            message, exchange="", routing_key=request.properties["reply_to"]
        )


@contextlib.contextmanager
def probe(broker_url: str) -> Iterator[Probe]:
    url = broker_url
    with kombu.Connection(url, transport=transport_for(url)) as connection:
        yield Probe(connection.default_channel, unique("probe"))


class ClientMiddlewareBehaviour:
    """Every call, cast and event goes through the proxies' middlewares."""

    def test_headers_added_reach_the_request_under_the_frameworks_own(
        self, cluster: ServiceCluster
    ):
        sends = RecordingSends()
        with (
            probe(cluster.broker_url) as target,
            ClusterProxy(config=cluster.config, middleware=[sends]) as proxy,
        ):
            future = proxy[target.service].echo.call_async(7)
            request = target.take()
            (call,) = sends.before
            assert request.headers["x-trace"] == "trace-echo"
            assert request.headers[protocol.HEADER_METHOD] == "echo"
            assert request.properties["correlation_id"] == call.correlation_id
            assert future.correlation_id == call.correlation_id
            assert sends.after == []  # nothing known yet
            target.reply(request, 14)
            assert future.result() == 14
            proxy[target.service].echo.cast(1)
            proxy.dispatch(target.service, "things.happened", {"n": 1})
            cast, event = target.take(), target.take()
        assert (call.kind, call.args) == ("call", (7,))
        assert cast.headers["x-trace"] == "trace-echo"
        assert cast.headers[protocol.HEADER_METHOD] == "echo"
        assert event.headers["x-trace"] == "trace-things.happened"
        assert event.headers[protocol.HEADER_EVENT_TYPE] == "things.happened"
        assert sends.outcomes(3) == [
            (f"call {target.service}.echo", 14),
            (f"cast {target.service}.echo", None),
            (f"event {target.service}.things.happened", None),
        ]
        assert [c.correlation_id is None for c in sends.before] == [False, True, True]

    def test_after_hooks_see_each_outcome_once(self, cluster: ServiceCluster):
        cluster.start(Greeter, Compute)
        sends = RecordingSends()
        with (
            probe(cluster.broker_url) as silent,
            ClusterProxy(config=cluster.config, middleware=[sends]) as proxy,
        ):
            assert proxy.greeter.hello("ada") == "Hello, ada!"
            with pytest.raises(RemoteError):
                proxy.compute.compute(count=-1)
            with pytest.raises(CallTimeoutError):
                proxy[silent.service].echo.with_options(timeout=0.3)(1)
            with pytest.raises(UnknownServiceError):
                proxy.nobody.echo(1)
            with pytest.raises(UnknownServiceError):
                proxy.nobody.echo.cast(1)
            proxy.greeter.hello.cast("bob")
            proxy.dispatch("greeter", "greeted", "ada")
        assert sends.outcomes(7) == [
            ("call greeter.hello", "Hello, ada!"),
            ("call compute.compute", RemoteError),
            (f"call {silent.service}.echo", CallTimeoutError),
            ("call nobody.echo", UnknownServiceError),
            ("cast nobody.echo", UnknownServiceError),
            ("cast greeter.hello", None),
            ("event greeter.greeted", None),
        ]
        assert len(sends.after) == len(sends.before) == 7

    def test_a_refused_send_is_never_published(self, cluster: ServiceCluster):
        sends = RecordingSends()
        with (
            probe(cluster.broker_url) as target,
            ClusterProxy(
                config=cluster.config, middleware=[sends, Refusing()]
            ) as proxy,
        ):
            with pytest.raises(PermissionError, match="call echo refused"):
                proxy[target.service].echo(1)
            with pytest.raises(PermissionError, match="cast echo refused"):
                proxy[target.service].echo.cast(1)
            with pytest.raises(PermissionError, match="event told refused"):
                proxy.dispatch(target.service, "told")
            assert target.empty()
        assert [outcome for _, outcome in sends.outcomes(3)] == [PermissionError] * 3

    def test_the_after_hook_of_a_future_nobody_reads_runs_once(
        self, cluster: ServiceCluster
    ):
        cluster.start(Greeter)
        sends = RecordingSends()
        with ClusterProxy(config=cluster.config, middleware=[sends]) as proxy:
            futures = [proxy.greeter.hello.call_async(f"u{n}") for n in range(5)]
            outcomes = sends.outcomes(5)  # nobody asked for a result
            assert sorted(outcomes) == [
                ("call greeter.hello", f"Hello, u{n}!") for n in range(5)
            ]
            assert [f.result() for f in futures] == [f"Hello, u{n}!" for n in range(5)]
            assert [f.result() for f in futures] == [f"Hello, u{n}!" for n in range(5)]
        assert len(sends.after) == 5

    def test_map_and_the_asyncio_proxy_go_through_it(self, cluster: ServiceCluster):
        cluster.start(Greeter)
        sends = RecordingSends()
        with ClusterProxy(config=cluster.config, middleware=[sends]) as proxy:
            assert list(proxy.greeter.hello.map(["a", "b"])) == [
                "Hello, a!",
                "Hello, b!",
            ]

        async def asynchronous() -> object:
            async with AsyncClusterProxy(
                config=cluster.config, middleware=[sends]
            ) as proxy:
                future = await proxy.greeter.hello.call_async("c")
                with pytest.raises(UnknownServiceError):
                    await proxy.nobody.echo(1)
                await proxy.greeter.hello.cast("d")
                await proxy.dispatch("greeter", "greeted")
                return await future

        assert asyncio.run(asynchronous()) == "Hello, c!"
        assert sorted(sends.outcomes(6), key=str) == sorted(
            [
                ("call greeter.hello", "Hello, a!"),
                ("call greeter.hello", "Hello, b!"),
                ("call greeter.hello", "Hello, c!"),
                ("call nobody.echo", UnknownServiceError),
                ("cast greeter.hello", None),
                ("event greeter.greeted", None),
            ],
            key=str,
        )

    def test_dependencies_send_through_the_configured_middleware(
        self, cluster: ServiceCluster
    ):
        RecordingSends.instances.clear()
        configured = {"middleware": (f"{__name__}:RecordingSends",)}
        cluster.start(Greeter, Frontend, **configured)
        cluster.start(Shop, Stock, **configured)
        assert cluster.proxy.frontend.welcome("ada") == "HELLO, ADA!"
        cluster.proxy.shop.order(unique("item"))
        seen = [
            outcome
            for sends in RecordingSends.instances
            for outcome in sends.outcomes(0)
        ]
        assert ("call greeter.hello", "Hello, ada!") in seen
        assert ("event shop.orders.created", None) in seen


class Noted:
    """A call, a cast and an event handler, for the runner's middleware."""

    name = "noted"

    @rpc
    def hello(self, name: str) -> str:
        return f"hi {name}"

    @event_handler("noted", "said")
    def on_said(self, payload: object) -> None:
        pass


class Recording(Middleware):
    """Answers "cached", refuses "denied", and notes every run's kind and result."""

    seen: ClassVar[list[tuple[str, str, object]]] = []

    def before_handler(self, call: ServerCall) -> Outcome | None:
        args = call.context.request.args
        if args and args[0] == "cached":
            return Outcome(result="from the cache")
        if args and args[0] == "denied":
            raise PermissionError("not you")
        return None

    def after_handler(self, call: ServerCall, outcome: Outcome) -> None:
        self.seen.append((call.kind, call.method, outcome.result))


class MiddlewareBehaviour:
    @pytest.fixture
    def noted(self, cluster: ServiceCluster) -> ServiceRunner:
        Recording.seen = []
        runner = ServiceRunner([Noted], cluster.config, middleware=[Recording()])
        cluster.runners.append(runner)
        runner.start()
        return runner

    def test_calls_casts_and_events_run_through_the_middleware(
        self, cluster: ServiceCluster, noted: ServiceRunner
    ):
        assert cluster.proxy.noted.hello("ada") == "hi ada"
        with entrypoint_waiter(noted, "noted", "hello"):
            cluster.proxy.noted.hello.cast("bob")
        with entrypoint_waiter(noted, "noted", "on_said"):
            cluster.proxy.dispatch("noted", "said", "x")
        assert Recording.seen == [
            ("call", "hello", "hi ada"),
            ("cast", "hello", "hi bob"),
            ("event", "on_said", None),
        ]

    def test_a_middleware_answers_or_rejects_in_place_of_the_handler(
        self, cluster: ServiceCluster, noted: ServiceRunner
    ):
        assert cluster.proxy.noted.hello("cached") == "from the cache"
        with pytest.raises(RemoteError, match="not you"):
            cluster.proxy.noted.hello("denied")
