"""PendingCalls, no broker: replies, returns, disconnections, expiry and resends."""

from __future__ import annotations

import time

import orjson
import pytest

from rpc import BrokerError, CallTimeoutError, Config, UnknownServiceError
from rpc.calls import CallBuilder, PreparedCall
from rpc.middleware import ClientChain
from rpc.pending import PendingCall, PendingCalls
from rpc.transport import Delivery


class Waiter:
    """Records how it was settled; the protocol's label and service."""

    def __init__(self, call: PreparedCall) -> None:
        self.service = call.service
        self.deadline = call.deadline
        self.label = call.label
        self.settled: list[object] = []

    def _deliver(self, delivery: Delivery) -> None:
        self.settled.append(delivery)

    def _fail(self, exc: Exception) -> None:
        self.settled.append(exc)


def delivery(correlation_id: str, **headers: object) -> Delivery:
    return Delivery(
        body=orjson.dumps({"result": 1, "error": None}),
        content_type="application/json",
        headers=headers,
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


BUILDER = CallBuilder(Config(broker_url="memory://"), "client", ClientChain())


def register(
    pending: PendingCalls,
    *,
    seconds: float = 30,
    idempotent: bool | None = None,
    method: str = "method",
) -> tuple[PendingCall, Waiter]:
    call = BUILDER.request("svc", method, (), None, seconds)
    waiter = Waiter(call)
    return pending.add(call, waiter, idempotent), waiter


def test_a_reply_settles_its_waiter_once_and_others_are_dropped():
    pending = PendingCalls()
    entry, waiter = register(pending)
    assert len(pending) == 1
    reply = delivery(entry.call.correlation_id)
    pending.on_reply(reply)
    pending.on_reply(reply)  # a duplicate finds nobody
    pending.on_reply(delivery("unknown"))
    assert waiter.settled == [reply]
    assert len(pending) == 0
    assert not pending.forget(entry.call.correlation_id)


def test_a_returned_request_fails_as_unknown_service():
    pending = PendingCalls()
    entry, waiter = register(pending)
    pending.on_return(delivery(entry.call.correlation_id))
    (error,) = waiter.settled
    assert isinstance(error, UnknownServiceError)
    assert "'svc'" in str(error)
    assert len(pending) == 0


def test_listeners_get_every_reply_until_forgotten():
    pending = PendingCalls()
    heard: list[Delivery] = []
    pending.listen("discovery", heard.append)
    assert pending.listening == 1
    pending.on_reply(delivery("discovery"))
    pending.on_reply(delivery("discovery"))
    assert not pending.forget("discovery")  # not a call: nothing was waiting
    pending.on_reply(delivery("discovery"))
    assert len(heard) == 2
    assert pending.listening == 0


def test_a_lost_connection_fails_calls_and_keeps_idempotent_ones():
    pending = PendingCalls()
    plain, plain_waiter = register(pending)
    declared, declared_waiter = register(pending, method="declared")
    chosen, chosen_waiter = register(pending, idempotent=True)
    _, refused_waiter = register(pending, method="declared", idempotent=False)
    # The service said so in an earlier reply: remembered per service.method.
    learned, _ = register(pending, method="declared")
    pending.on_reply(
        delivery(learned.call.correlation_id, **{"x-rpc-idempotent": True})
    )
    pending.connection_lost(OSError("reset"))
    for waiter in (plain_waiter, refused_waiter):
        (error,) = waiter.settled
        assert isinstance(error, BrokerError)
        assert "lost while the call was in flight: reset" in str(error)
    assert declared_waiter.settled == chosen_waiter.settled == []
    assert len(pending) == 0 and pending.has_resends
    assert (declared.attempts, chosen.attempts, plain.attempts) == (2, 2, 1)

    sent: list[PendingCall] = []
    pending.send_again(sent.append)
    assert {entry.call.correlation_id for entry in sent} == {
        declared.call.correlation_id,
        chosen.call.correlation_id,
    }
    assert len(pending) == 2 and not pending.has_resends


def test_a_method_redeployed_without_idempotent_stops_being_retried():
    pending = PendingCalls()
    first, _ = register(pending)
    pending.on_reply(delivery(first.call.correlation_id, **{"x-rpc-idempotent": True}))
    second, _ = register(pending)
    pending.on_reply(delivery(second.call.correlation_id))  # the header is gone
    _, waiter = register(pending)
    pending.connection_lost(OSError("reset"))
    assert isinstance(waiter.settled[0], BrokerError)


def test_resends_past_their_deadline_fail_and_a_failed_resend_keeps_the_rest():
    pending = PendingCalls()
    late, late_waiter = register(pending, seconds=0.05, idempotent=True)
    kept = [register(pending, idempotent=True)[0] for _ in range(3)]
    pending.connection_lost(OSError("reset"))
    time.sleep(0.1)

    def broken(entry: PendingCall) -> None:
        raise BrokerError("down again")

    with pytest.raises(BrokerError):
        pending.send_again(broken)
    (error,) = late_waiter.settled
    assert isinstance(error, CallTimeoutError)
    assert len(pending) == 0 and pending.has_resends
    sent: list[PendingCall] = []
    pending.send_again(sent.append)
    assert sorted(e.call.correlation_id for e in sent) == sorted(
        e.call.correlation_id for e in kept
    )
    assert late not in sent


def test_a_publish_that_failed_is_kept_only_when_idempotent_and_running():
    pending = PendingCalls()
    entry, _ = register(pending, idempotent=True)
    assert pending.publish_failed(entry, retry=True)
    assert entry.attempts == 2 and pending.has_resends and len(pending) == 0
    stopped, _ = register(pending, idempotent=True)
    assert not pending.publish_failed(stopped, retry=False)
    plain, _ = register(pending)
    assert not pending.publish_failed(plain, retry=True)
    assert len(pending) == 0
    assert pending.forget(entry.call.correlation_id)
    assert not pending.has_resends


def test_expiry_fails_only_calls_past_their_deadline():
    pending = PendingCalls()
    _, soon = register(pending, seconds=0.05)
    _, later = register(pending, seconds=30)
    time.sleep(0.1)
    pending.expire()
    (error,) = soon.settled
    assert isinstance(error, CallTimeoutError)
    assert "call svc.method got no reply before its deadline" in str(error)
    assert later.settled == [] and len(pending) == 1


def test_fail_all_fails_pending_calls_and_those_waiting_to_be_resent():
    pending = PendingCalls()
    _, waiting = register(pending)
    resend, resent = register(pending, idempotent=True)
    assert pending.publish_failed(resend, retry=True)
    closed = BrokerError("the proxy was closed")
    pending.fail_all(closed)
    assert waiting.settled == resent.settled == [closed]
    assert len(pending) == 0 and not pending.has_resends
