"""Publisher-confirm bookkeeping of BrokerConnection: acks matched by delivery tag."""

from __future__ import annotations

import concurrent.futures
import types

import pytest

from rpc.errors import BrokerError
from rpc.transport import BrokerConnection


@pytest.fixture
def connection():
    return BrokerConnection(
        "memory://", name="test", on_connect=lambda channel: None, confirms=True
    )


def pending(connection, *message_ids):
    futures = []
    for message_id in message_ids:
        connection._confirm_tag += 1
        future = concurrent.futures.Future()
        connection._unconfirmed[connection._confirm_tag] = (future, message_id)
        futures.append(future)
    return futures


def test_an_ack_confirms_its_tag_only(connection):
    first, second = pending(connection, "a", "b")
    connection._on_confirm_ack(2, False)
    assert second.result(0) is True
    assert not first.done()


def test_a_multiple_ack_confirms_every_tag_up_to_it(connection):
    futures = pending(connection, "a", "b", "c")
    connection._on_confirm_ack(2, True)
    assert [f.done() for f in futures] == [True, True, False]


def test_a_returned_message_resolves_false_on_its_ack(connection):
    (future,) = pending(connection, "lost")
    message = types.SimpleNamespace(properties={"message_id": "lost"})
    connection._on_confirm_return(None, "rpc", "nobody.x", message)
    connection._on_confirm_ack(1, False)
    assert future.result(0) is False
    assert connection._returned == set()


def test_a_nack_fails_with_broker_error(connection):
    (future,) = pending(connection, "a")
    connection._on_confirm_nack(1, False)
    with pytest.raises(BrokerError, match="refused"):
        future.result(0)


def test_losing_the_connection_fails_what_is_unconfirmed(connection):
    futures = pending(connection, "a", "b")
    connection._close_connection()
    for future in futures:
        with pytest.raises(BrokerError, match="before the broker confirmed"):
            future.result(0)
