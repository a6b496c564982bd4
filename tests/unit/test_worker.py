"""The worker's answers to requests, in memory: here, casts whose handler raises."""

from __future__ import annotations

from rpc import Config, protocol
from rpc.errors import BrokerError
from rpc.transport import Delivery
from rpc.worker import ServiceRunner
from rpc.worker.consumers import RpcQueueConsumer
from services.greeter import Greeter
from tests.behaviour import FailingCastBehaviour


class TestFailingCastsInMemory(FailingCastBehaviour):
    pass


# -- a stopping worker hands back what arrives after its cancel (issue 19) -------


class ClosingConnection:
    """A connection on its way down: what a stopping worker's consumer sees."""

    def __init__(self, *, connected: bool) -> None:
        self.connected = connected
        self.rejected: list[Delivery] = []

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        assert requeue
        self.rejected.append(delivery)
        raise BrokerError("not connected to the broker (test)")


def delivery(tag: int) -> Delivery:
    return Delivery(
        body=b"{}",
        content_type="application/json",
        headers={protocol.HEADER_METHOD: "hello"},
        correlation_id=str(tag),
        reply_to="amq.rabbitmq.reply-to",
        delivery_tag=tag,
        redelivered=False,
        routing_key="greeter.hello",
        exchange="rpc",
        consumer_tag="c",
        generation=1,
        properties={},
    )


def test_deliveries_after_the_cancel_go_back_quietly_and_are_counted_once(caplog):
    runner = ServiceRunner([Greeter], Config(broker_url="memory://"))
    worker = runner._worker
    consumer = RpcQueueConsumer(worker, "greeter")
    closing = ClosingConnection(connected=True)
    worker.connection = closing  # type: ignore[assignment]
    worker.accepting = False  # stop() began
    with caplog.at_level("INFO", logger="rpc"):
        consumer.on_delivery(delivery(1))  # rejected while the channel is open
        closing.connected = False
        consumer.on_delivery(delivery(2))  # left unacked: requeued on close
        consumer.on_delivery(delivery(3))
        runner._close()
    assert [d.delivery_tag for d in closing.rejected] == [1]
    assert runner.in_flight == 0
    assert [r.levelname for r in caplog.records if r.name.startswith("rpc")] == ["INFO"]
    assert "3 deliveries after cancel returned to the queue" in caplog.text
