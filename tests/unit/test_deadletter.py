"""Delivery counting decisions and dead-letter arguments (rpc/deadletter.py)."""

from __future__ import annotations

import pytest

from rpc import deadletter, protocol
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
