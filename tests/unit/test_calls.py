"""Building calls, casts and events, no broker: names, deadlines, headers, hooks."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import orjson
import pytest

from rpc import (
    CallTimeoutError,
    ClientCall,
    ClusterProxy,
    Config,
    Middleware,
    Outcome,
    RemoteError,
    protocol,
)
from rpc.calls import USE_DEFAULT, CallBuilder, Observed, publish_request
from rpc.context import CallContext, serving
from rpc.middleware import ClientChain
from rpc.pending import PendingCalls
from rpc.proxy import RpcFuture
from rpc.transport import Delivery

CONFIG = Config(broker_url="memory://", default_timeout=30)


class Tagging(Middleware):
    def __init__(self) -> None:
        self.before: list[ClientCall] = []
        self.after: list[tuple[ClientCall, Outcome]] = []

    def before_send(self, call: ClientCall) -> None:
        call.headers["x-trace"] = "t1"
        call.headers[protocol.HEADER_VERSION] = 99
        self.before.append(call)

    def after_send(self, call: ClientCall, outcome: Outcome) -> None:
        self.after.append((call, outcome))


def builder(*middleware: Middleware) -> CallBuilder:
    return CallBuilder(CONFIG, "client", ClientChain(middleware))


def reply(correlation_id: str, body: object) -> Delivery:
    return Delivery(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={},
        correlation_id=correlation_id,
        reply_to=None,
        delivery_tag=1,
        redelivered=False,
        routing_key="",
        exchange="",
        consumer_tag="",
        generation=1,
        properties={},
    )


def test_a_request_is_addressed_encoded_and_given_its_deadline():
    calls = builder()
    call = calls.request("svc", "method", [1], {"b": 2}, 5)
    assert call.routing_key == "svc.method"
    assert orjson.loads(call.body) == {"args": [1], "kwargs": {"b": 2}}
    assert call.deadline == pytest.approx(call.created + 5)
    assert call.headers == protocol.request_headers("method", call.deadline, "client")
    assert call.observed is None  # no middleware: nothing is made for them
    assert calls.request("svc", "method", (), None, USE_DEFAULT).deadline == (
        pytest.approx(call.created + 30, abs=1)
    )
    other = calls.request("svc", "method", (), None, 5)
    assert other.correlation_id != call.correlation_id
    assert other.correlation_id[:16] == call.correlation_id[:16]


def test_a_sharded_request_goes_by_its_key():
    call = builder().request("svc", "get", (), None, 5, shard_key="user:1")
    assert call.routing_key == protocol.shard_routing_key("svc", "get")
    assert call.headers[protocol.HEADER_SHARD_KEY] == "user:1"


def test_bad_names_and_passed_deadlines_raise_before_any_hook():
    tagging = Tagging()
    calls = builder(tagging)
    with pytest.raises(ValueError):
        calls.request("bad name", "method", (), None, 5)
    with pytest.raises(ValueError):
        calls.cast("svc", "bad-method", (), None)
    with pytest.raises(ValueError):
        calls.event("svc", "bad type!", None)
    with pytest.raises(CallTimeoutError, match="already passed"):
        calls.request("svc", "method", (), None, -1)
    assert tagging.before == tagging.after == []


def test_a_nested_call_never_outlives_the_call_it_serves():
    calls = builder()
    deadline = time.time() + 2
    request = protocol.Request("caller", "m", [], {}, None, None, deadline, "client")
    with serving(CallContext("caller", request)):
        call = calls.request("svc", "method", (), None, 60)
    assert call.deadline == deadline
    assert call.headers[protocol.HEADER_CALLER] == "caller"
    assert call.headers[protocol.HEADER_DEADLINE] == deadline


def test_middleware_headers_go_under_the_frameworks_own():
    tagging = Tagging()
    calls = builder(tagging)
    call = calls.request("svc", "method", [1], None, 5)
    cast = calls.cast("svc", "method", (), {"a": 1})
    event = calls.event("src", "happened", {"n": 1})
    for message in (call, cast, event):
        assert message.headers["x-trace"] == "t1"
        assert message.headers[protocol.HEADER_VERSION] == protocol.PROTOCOL_VERSION
    seen = [
        (c.kind, c.service, c.method, c.args, c.correlation_id) for c in tagging.before
    ]
    assert seen == [
        ("call", "svc", "method", [1], call.correlation_id),
        ("cast", "svc", "method", (), None),
        ("event", "src", "happened", ({"n": 1},), None),
    ]
    assert cast.mandatory and not event.mandatory
    assert event.headers[protocol.HEADER_EVENT_TYPE] == "happened"


def test_a_refused_send_raises_and_its_after_hooks_see_it():
    tagging = Tagging()

    class Refusing(Middleware):
        def before_send(self, call: ClientCall) -> None:
            raise PermissionError("no")

    calls = builder(tagging, Refusing())
    with pytest.raises(PermissionError):
        calls.request("svc", "method", (), None, 5)
    ((_, outcome),) = tagging.after
    assert isinstance(outcome.error, PermissionError)


def test_an_observed_send_is_finished_once_whoever_tries():
    tagging = Tagging()
    call = ClientCall("svc", "m", "call", (), {})
    observed = Observed(ClientChain([tagging]), call)
    wins: list[bool] = []
    threads = [
        threading.Thread(target=lambda: wins.append(observed.failed(TimeoutError())))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(wins) == [False] * 7 + [True]
    assert observed.replied(reply("x", {"result": 1, "error": None}), "svc") is None
    assert len(tagging.after) == 1


def test_a_reply_is_decoded_once_for_the_hooks_and_the_caller():
    tagging = Tagging()
    calls = builder(tagging)
    cluster = ClusterProxy(config=CONFIG)  # never started
    error = {"type": "KeyError", "message": "'k'", "traceback": ""}
    futures = []
    for body in ({"result": [1], "error": None}, {"result": None, "error": error}):
        call = calls.request("svc", "method", (), None, 5)
        future = RpcFuture(
            cluster,
            "svc",
            "method",
            call.correlation_id,
            call.deadline,
            observed=call.observed,
        )
        future._deliver(reply(call.correlation_id, body))
        futures.append(future)
    ok, failed = [outcome for _, outcome in tagging.after]
    assert ok.result == [1] and futures[0].result() is ok.result
    with pytest.raises(RemoteError) as caught:
        futures[1].result()
    assert caught.value is failed.error


def test_a_call_sent_again_after_a_reconnection_runs_no_hook_again():
    tagging = Tagging()
    calls = builder(tagging)
    cluster = ClusterProxy(config=CONFIG)  # never started
    call = calls.request("svc", "method", (), None, 5)
    future = RpcFuture(
        cluster,
        "svc",
        "method",
        call.correlation_id,
        call.deadline,
        observed=call.observed,
    )
    pending = PendingCalls()
    pending.add(call, future, idempotent=True)
    pending.connection_lost(OSError("reset"))
    published: list[dict[str, object]] = []
    pending.send_again(
        lambda entry: publish_request(
            lambda body, **options: published.append(options),
            entry.call,
            "reply-here",
            entry.attempts,
        )
    )
    (options,) = published
    headers = options["headers"]
    assert isinstance(headers, dict)
    assert headers["x-trace"] == "t1"  # what the hooks added the first time
    assert headers[protocol.HEADER_DELIVERY_COUNT] == 2
    assert len(tagging.before) == 1 and tagging.after == []
    pending.on_reply(reply(call.correlation_id, {"result": 3, "error": None}))
    assert future.result() == 3
    assert [outcome.result for _, outcome in tagging.after] == [3]


def test_a_cancelled_future_is_its_outcome_and_a_late_reply_changes_nothing():
    tagging = Tagging()
    calls = builder(tagging)
    cluster = ClusterProxy(config=CONFIG)  # never started
    call = calls.request("svc", "method", (), None, 5)
    future = RpcFuture(
        cluster,
        "svc",
        "method",
        call.correlation_id,
        call.deadline,
        observed=call.observed,
    )
    assert future.cancel()
    future._deliver(reply(call.correlation_id, {"result": 1, "error": None}))
    assert not future.cancel()
    ((_, outcome),) = tagging.after
    assert isinstance(outcome.error, concurrent.futures.CancelledError)
    assert isinstance(future.exception(), concurrent.futures.CancelledError)


# -- names AMQP cannot carry -------------------------------------------------------

LONG_SERVICE = "s" * 200
LONG_METHOD = "m" * 60  # 261 bytes with the service and the dot


@pytest.mark.parametrize(
    "build",
    [
        lambda calls: calls.request(LONG_SERVICE, LONG_METHOD, [], {}, 5),
        lambda calls: calls.cast(LONG_SERVICE, LONG_METHOD, [], {}),
        # 250 bytes, and ".shard" on top.
        lambda calls: calls.request("s" * 200, "m" * 49, [], {}, 5, shard_key="k"),
        lambda calls: calls.event("s" * 200, "e." + "t" * 60, {}),
    ],
    ids=["call", "cast", "sharded call", "event"],
)
def test_names_over_the_routing_key_limit_are_refused_before_sending(build):
    with pytest.raises(ValueError, match="255 bytes"):
        build(builder())


def test_names_just_within_the_limit_are_sent():
    prepared = builder().request("s" * 200, "m" * 54, [], {}, 5)
    assert len(prepared.routing_key) == protocol.MAX_ROUTING_KEY_BYTES
