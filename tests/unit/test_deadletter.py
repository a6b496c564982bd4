"""Delivery counting decisions and dead-letter arguments (rpc/deadletter.py)."""

from __future__ import annotations

import pytest

from rpc import dead_letters, deadletter, protocol
from rpc.deadletter import Action, Verdict, verdict


def classic(redelivered: bool, count: object = None, limit: int = 3) -> Verdict:
    headers = {} if count is None else {protocol.HEADER_DELIVERY_COUNT: count}
    return verdict(redelivered=redelivered, headers=headers, delivery_limit=limit)


def test_a_first_delivery_runs():
    assert classic(False) == Verdict(Action.RUN, 1)


def test_a_counted_copy_runs_with_its_count():
    assert classic(False, 3) == Verdict(Action.RUN, 3)


def test_a_redelivery_is_requeued_with_the_count_incremented():
    assert classic(True) == Verdict(Action.REQUEUE_COUNTED, 2)
    assert classic(True, 2) == Verdict(Action.REQUEUE_COUNTED, 3)


def test_a_redelivery_past_the_limit_is_dead_lettered():
    assert classic(True, 3, limit=3) == Verdict(Action.DEAD_LETTER, 4)
    assert classic(True, limit=1) == Verdict(Action.DEAD_LETTER, 2)


def test_the_handler_runs_exactly_limit_times_when_it_always_crashes():
    runs, headers, redelivered = 0, {}, False
    for _ in range(20):  # each step: one delivery of the message or of its copy
        decision = verdict(redelivered=redelivered, headers=headers, delivery_limit=4)
        if decision.action is Action.DEAD_LETTER:
            break
        if decision.action is Action.RUN:
            runs += 1
            redelivered = True  # the process died: the broker redelivers it
        else:
            headers = deadletter.counted_headers(headers, decision.delivery_count)
            redelivered = False  # the copy is a fresh message
    assert decision.action is Action.DEAD_LETTER
    assert runs == 4


@pytest.mark.parametrize("bad", ["2", 0, -1, True, 2.5])
def test_a_nonsense_count_header_counts_as_one(bad):
    assert classic(False, bad) == Verdict(Action.RUN, 1)


def test_quorum_queues_leave_counting_to_the_broker():
    headers = {protocol.HEADER_BROKER_DELIVERY_COUNT: 7}
    decision = verdict(
        redelivered=True, headers=headers, delivery_limit=2, queue_type="quorum"
    )
    assert decision == Verdict(Action.RUN, 8)
    first = verdict(
        redelivered=False,
        headers={protocol.HEADER_BROKER_DELIVERY_COUNT: 0},
        delivery_limit=2,
        queue_type="quorum",
    )
    assert first == Verdict(Action.RUN, 1)


def test_queue_arguments():
    assert (
        deadletter.queue_arguments("svc", queue_type="classic", delivery_limit=5) == {}
    )
    assert deadletter.queue_arguments("svc", queue_type="quorum", delivery_limit=5) == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 4,
        "x-dead-letter-exchange": protocol.DEAD_LETTER_FILTER_EXCHANGE,
        "x-dead-letter-routing-key": "rpc-svc",
    }


def test_dead_letter_headers_keep_the_original_and_say_why():
    headers = deadletter.dead_letter_headers(
        {protocol.HEADER_METHOD: "m"}, deadletter.REASON_MALFORMED, "x" * 5000
    )
    assert headers[protocol.HEADER_METHOD] == "m"
    assert headers[protocol.HEADER_DEATH_REASON] == "malformed"
    assert len(headers[protocol.HEADER_DEATH_DETAIL]) == 1000


def test_our_count_and_the_quorum_queues_returns_add_up():
    headers = {
        protocol.HEADER_DELIVERY_COUNT: 3,
        protocol.HEADER_BROKER_DELIVERY_COUNT: 2,
    }
    assert deadletter.delivery_count(headers, "quorum") == 5
    assert deadletter.delivery_count(headers, "classic") == 3
    assert deadletter.delivery_count({}, "quorum") == 1


def quorum_event(returned: int, count: int | None = None, limit: int = 3) -> Verdict:
    headers: dict = {protocol.HEADER_BROKER_DELIVERY_COUNT: returned}
    if count is not None:
        headers[protocol.HEADER_DELIVERY_COUNT] = count
    return verdict(
        redelivered=returned > 0,
        headers=headers,
        delivery_limit=limit,
        queue_type="quorum",
        broker_limit=False,
    )


def test_a_quorum_queue_without_a_broker_limit_is_limited_by_the_worker():
    assert quorum_event(0) == Verdict(Action.RUN, 1)
    assert quorum_event(2) == Verdict(Action.RUN, 3)
    assert quorum_event(3) == Verdict(Action.DEAD_LETTER, 4)
    assert quorum_event(1, count=3) == Verdict(Action.DEAD_LETTER, 4)


def test_after_a_failure_the_event_is_delivered_again_until_the_limit():
    assert deadletter.failure_verdict(delivery_count=1, delivery_limit=3) == Verdict(
        Action.REQUEUE_COUNTED, 2
    )
    assert deadletter.failure_verdict(delivery_count=3, delivery_limit=3) == Verdict(
        Action.DEAD_LETTER, 3
    )
    assert deadletter.failure_verdict(delivery_count=1, delivery_limit=1) == Verdict(
        Action.DEAD_LETTER, 1
    )


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
@pytest.mark.parametrize("crashes", [False, True])
def test_a_poison_event_runs_exactly_limit_times(queue_type, crashes):
    """Each step is one delivery of the event or of a copy, as a worker sees it."""
    runs, headers, redelivered, limit = 0, {}, False, 4
    for _ in range(20):
        decision = verdict(
            redelivered=redelivered,
            headers=headers,
            delivery_limit=limit,
            queue_type=queue_type,
            broker_limit=False,
        )
        if decision.action is Action.DEAD_LETTER:
            break
        if decision.action is Action.REQUEUE_COUNTED:  # classic: counted copy
            headers = deadletter.counted_headers(headers, decision.delivery_count)
            redelivered = False
            continue
        runs += 1
        if crashes:  # the broker takes it back, and a quorum queue counts that
            returned = headers.get(protocol.HEADER_BROKER_DELIVERY_COUNT, 0)
            if queue_type == "quorum":
                headers = {
                    **headers,
                    protocol.HEADER_BROKER_DELIVERY_COUNT: returned + 1,
                }
            redelivered = True
            continue
        failed = deadletter.failure_verdict(
            delivery_count=decision.delivery_count, delivery_limit=limit
        )
        if failed.action is Action.DEAD_LETTER:
            break
        headers = deadletter.counted_headers(headers, failed.delivery_count)
        redelivered = False
    assert runs == limit


def test_a_copy_drops_the_quorum_queues_count():
    headers = {protocol.HEADER_BROKER_DELIVERY_COUNT: 2, "x-rpc-event-type": "t"}
    assert deadletter.counted_headers(headers, 4) == {
        protocol.HEADER_DELIVERY_COUNT: 4,
        "x-rpc-event-type": "t",
    }


def test_dead_letter_headers_name_the_queue_it_came_from():
    headers = deadletter.dead_letter_headers(
        {"a": 1}, "handler-error", "ValueError: no", queue="rpc-events.svc.on_x"
    )
    assert headers == {
        "a": 1,
        protocol.HEADER_DEATH_REASON: "handler-error",
        protocol.HEADER_DEATH_DETAIL: "ValueError: no",
        protocol.HEADER_ORIGIN_QUEUE: "rpc-events.svc.on_x",
    }


def letter(**headers) -> dead_letters.DeadLetter:
    return dead_letters.DeadLetter(body=b"{}", headers=headers, content_type=None)


def test_a_dead_letter_says_where_it_came_from_and_goes_back_there():
    event = letter(
        **{
            protocol.HEADER_ORIGIN_QUEUE: "rpc-events.svc.on_x.singleton",
            protocol.HEADER_EVENT_TYPE: "orders.created",
        }
    )
    assert (event.method, event.event_type) == ("on_x", "orders.created")
    assert dead_letters.requeue_queue("svc", event) == "rpc-events.svc.on_x.singleton"
    request = letter(**{protocol.HEADER_METHOD: "hello"})
    assert (request.method, request.queue, request.event_type) == ("hello", "", "")
    assert dead_letters.requeue_queue("svc", request) == "rpc-svc"
    # Quorum queues dead-letter requests by themselves, and say which queue.
    by_broker = letter(**{protocol.HEADER_FIRST_DEATH_QUEUE: "rpc-svc"})
    assert by_broker.queue == "rpc-svc"
    # Never into another service's queue, nor the dead-letter queue itself.
    for elsewhere in ("rpc-events.other.on_x", "rpc-other", "rpc-svc.dead-letter"):
        stray = letter(**{protocol.HEADER_ORIGIN_QUEUE: elsewhere})
        assert dead_letters.requeue_queue("svc", stray) == "rpc-svc"


def test_a_sharded_dead_letter_goes_back_through_the_shard_exchange():
    sharded = letter(
        **{
            protocol.HEADER_METHOD: "take",
            protocol.HEADER_SHARD_KEY: "user:7",
            protocol.HEADER_ORIGIN_QUEUE: "rpc-svc",
        }
    )
    # Its worker's own queue may be gone: the exchange finds the key's owner now.
    assert dead_letters.requeue_route("svc", sharded) == ("rpc", "svc.take.shard")
    plain = letter(
        **{protocol.HEADER_METHOD: "take", protocol.HEADER_ORIGIN_QUEUE: "rpc-svc"}
    )
    assert dead_letters.requeue_route("svc", plain) == ("", "rpc-svc")


def test_the_retry_delay_doubles_after_each_failed_run_up_to_the_cap():
    delays = [deadletter.retry_delay(n, base=1.0, cap=30.0) for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert deadletter.retry_delay(1, base=0.25, cap=30.0) == 0.25
    assert deadletter.retry_delay(3, base=0.25, cap=0.5) == 0.5
    assert deadletter.retry_delay(10_000, base=1.0, cap=30.0) == 30.0


def test_no_retry_delay_without_a_base_or_a_failure():
    assert deadletter.retry_delay(3, base=0.0, cap=30.0) == 0.0
    assert deadletter.retry_delay(0, base=1.0, cap=30.0) == 0.0
