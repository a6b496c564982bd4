"""Publisher-confirm bookkeeping: acks matched by delivery tag."""

from __future__ import annotations

import concurrent.futures
import types

import pytest

from rpc.errors import BrokerError
from rpc.transport import BrokerConnection
from rpc.transport.confirms import Confirms


@pytest.fixture
def confirms():
    return Confirms()


def pending(confirms, *message_ids):
    futures = []
    for message_id in message_ids:
        future = concurrent.futures.Future()
        confirms.expect(future, message_id)
        futures.append(future)
    return futures


def test_an_ack_confirms_its_tag_only(confirms):
    first, second = pending(confirms, "a", "b")
    confirms.on_ack(2, False)
    assert second.result(0) is True
    assert not first.done()


def test_a_multiple_ack_confirms_every_tag_up_to_it(confirms):
    futures = pending(confirms, "a", "b", "c")
    confirms.on_ack(2, True)
    assert [f.done() for f in futures] == [True, True, False]


def test_a_returned_message_resolves_false_on_its_ack(confirms):
    (future,) = pending(confirms, "lost")
    message = types.SimpleNamespace(properties={"message_id": "lost"})
    confirms.on_return(None, "rpc", "nobody.x", message)
    confirms.on_ack(1, False)
    assert future.result(0) is False
    assert confirms.returned == set()


def test_a_nack_fails_with_broker_error(confirms):
    (future,) = pending(confirms, "a")
    confirms.on_nack(1, False)
    with pytest.raises(BrokerError, match="refused"):
        future.result(0)


def test_losing_the_connection_fails_what_is_unconfirmed(confirms):
    futures = pending(confirms, "a", "b")
    confirms.connection_lost()
    for future in futures:
        with pytest.raises(BrokerError, match="before the broker confirmed"):
            future.result(0)


def test_a_connection_closing_fails_what_its_confirms_hold():
    # The link settles its confirms when it drops the connection, lost or stopped.
    connection = BrokerConnection(
        "memory://", name="test", on_connect=lambda channel: None, confirms=True
    )
    (future,) = pending(connection._confirms, "a")
    connection._link.close_connection()
    with pytest.raises(BrokerError, match="before the broker confirmed"):
        future.result(0)
