"""Consumer callbacks that fail: a bug is logged with its traceback, a stop is not."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from rpc.errors import BrokerError
from rpc.transport.dispatching import Dispatcher


def message(body: bytes = b"{}") -> SimpleNamespace:
    return SimpleNamespace(
        properties={"content_type": "application/json"},
        delivery_info={"delivery_tag": 1, "routing_key": "q"},
        body=body,
    )


def failing(exc: Exception):
    def callback(delivery: object) -> None:
        raise exc

    return callback


@pytest.mark.parametrize("down", [True, False])
def test_a_bug_in_a_callback_is_logged_at_error_with_its_traceback(caplog, down):
    dispatcher = Dispatcher("worker", lambda: down)
    on_message = dispatcher.kombu_callback(failing(ValueError("bug")), 1, "ctag")
    with caplog.at_level(logging.DEBUG, logger="rpc.transport"):
        on_message(message())
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "consumer callback failed" in record.getMessage()


def test_broker_error_of_a_stopping_connection_is_logged_at_debug(caplog):
    dispatcher = Dispatcher("worker", lambda: True)
    on_message = dispatcher.kombu_callback(
        failing(BrokerError("not connected to the broker (worker)")), 1, "ctag"
    )
    with caplog.at_level(logging.DEBUG, logger="rpc.transport"):
        on_message(message())
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG and record.exc_info is None


def test_broker_error_of_a_live_connection_is_still_an_error(caplog):
    dispatcher = Dispatcher("worker", lambda: False)
    on_message = dispatcher.kombu_callback(failing(BrokerError("odd")), 1, "ctag")
    with caplog.at_level(logging.DEBUG, logger="rpc.transport"):
        on_message(message())
    assert [record.levelno for record in caplog.records] == [logging.ERROR]


def test_a_delivery_without_its_consumer_tag_gets_the_one_it_was_consumed_with():
    seen = []
    Dispatcher("worker", lambda: False).kombu_callback(seen.append, 3, "ctag")(
        message(b"x")
    )
    (delivery,) = seen
    assert delivery.consumer_tag == "ctag" and delivery.generation == 3
    assert delivery.body == b"x"
