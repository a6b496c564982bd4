"""A link's I/O thread: a worker whose reader dies exits, a client's fails loudly."""

from __future__ import annotations

import logging
import threading

import pytest

from rpc.config import Config
from rpc.transport import BrokerConnection
from rpc.transport import link as link_module
from rpc.worker import ServiceRunner
from services.greeter import Greeter

WAIT = 10.0


@pytest.fixture
def exits(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(link_module, "exit_process", calls.append)
    return calls


def broken_link(*, exit_on_reader_death: bool, lost: list[BaseException]):
    connection = BrokerConnection(
        "memory://",
        name="t",
        heartbeat=0,
        on_connect=lambda channel: None,
        on_disconnect=lost.append,
        exit_on_reader_death=exit_on_reader_death,
    )
    link = connection._link

    def reconnect_fails(exc: BaseException) -> None:
        raise RuntimeError("a bug while reconnecting")

    # Not connected: the I/O thread's first turn finds the link lost, and handling
    # that raises where nothing catches it.
    link._lost = reconnect_fails  # type: ignore[method-assign]
    return connection, link


def run_io_thread(link) -> None:
    thread = threading.Thread(target=link._run, name="rpc-io-t", daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_a_worker_whose_reading_thread_dies_exits_at_once(exits, caplog):
    lost: list[BaseException] = []
    _, link = broken_link(exit_on_reader_death=True, lost=lost)
    with caplog.at_level(logging.CRITICAL, logger="rpc.transport"):
        run_io_thread(link)
    assert exits == [link_module.READER_DIED_EXIT]
    (record, *_) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "died" in record.getMessage() and record.exc_info is not None


def test_a_client_whose_reading_thread_dies_stops_its_connection_instead(exits, caplog):
    lost: list[BaseException] = []
    connection, link = broken_link(exit_on_reader_death=False, lost=lost)
    with caplog.at_level(logging.CRITICAL, logger="rpc.transport"):
        run_io_thread(link)
    assert exits == []
    assert connection.stopped and not connection.connected
    assert [type(exc) for exc in lost] == [RuntimeError]
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)


def test_a_service_runner_turns_the_exit_on(exits):
    runner = ServiceRunner([Greeter], Config(broker_url="memory://"))
    assert runner._connection._link._exit_on_death
