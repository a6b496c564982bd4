"""How a worker publishes its replies (docs/protocol.md, "A reply")."""

from __future__ import annotations

from typing import Any

import pytest

from rpc.testing import ServiceCluster
from rpc.transport import BrokerConnection
from services.greeter import Greeter


def test_a_reply_goes_to_its_reply_to_and_is_not_mandatory(
    rpc_cluster: ServiceCluster, monkeypatch: pytest.MonkeyPatch
):
    # Some RabbitMQ versions return mandatory publishes to direct reply-to as
    # unroutable although they are delivered; so a reply is never mandatory.
    replies: list[dict[str, Any]] = []
    publish_and_ack = BrokerConnection.publish_and_ack

    def spy(self: BrokerConnection, delivery: Any, body: Any, **publish: Any) -> None:
        if body is not None:
            replies.append(dict(publish, reply_to=delivery.reply_to))
        publish_and_ack(self, delivery, body, **publish)

    monkeypatch.setattr(BrokerConnection, "publish_and_ack", spy)
    rpc_cluster.start(Greeter)
    assert rpc_cluster.proxy.greeter.hello("ada") == "Hello, ada!"
    [reply] = replies
    assert reply["exchange"] == ""
    assert reply["routing_key"] == reply["reply_to"]
    assert reply.get("mandatory", False) is False
