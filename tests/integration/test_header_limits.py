"""The bounds on one message's headers, as settings: over them, a message is
dead-lettered as malformed with its reason, and the worker serves on."""

from __future__ import annotations

import threading
import time
from typing import ClassVar

import kombu

from rpc import ClusterProxy, Config, ServiceRunner, protocol, rpc
from rpc.dead_letters import look


class Sink:
    name = "sink"
    seen: ClassVar[list[str]] = []
    lock = threading.Lock()

    @rpc
    def take(self, value: str) -> str:
        with Sink.lock:
            Sink.seen.append(value)
        return value


def publish_cast(url: str, value: str, headers: dict[str, object]) -> None:
    with kombu.Connection(url) as connection:
        producer = connection.Producer()
        producer.publish(
            {"args": [value], "kwargs": {}},
            exchange=protocol.RPC_EXCHANGE,
            routing_key=protocol.routing_key("sink", "take"),
            serializer="json",
            headers={**protocol.cast_headers("take", "test"), **headers},
        )


def dead_letters(config: Config, count: int, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        letters = look(config, "sink").letters
        if len(letters) >= count or time.monotonic() > deadline:
            return letters
        time.sleep(0.2)


def test_headers_over_the_configured_bounds_are_dead_lettered_with_why(broker_url):
    config = Config(
        broker_url=broker_url,
        max_header_bytes=1024,
        max_header_fields=16,
        max_header_depth=4,
    )
    with ServiceRunner([Sink], config), ClusterProxy(config=config) as cluster:
        publish_cast(broker_url, "long", {"x-note": "n" * 2000})
        publish_cast(broker_url, "many", {f"x-{n}": n for n in range(40)})
        nested: object = 1
        for _ in range(6):
            nested = {"d": nested}
        publish_cast(broker_url, "deep", {"x-deep": nested})
        publish_cast(broker_url, "fits", {"x-note": "n" * 1000})
        letters = dead_letters(config, 3)
        # The worker never stopped serving: the one within bounds ran, and calls do.
        assert cluster.sink.take("after") == "after"
        deadline = time.monotonic() + 30
        while "fits" not in Sink.seen and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "fits" in Sink.seen
    assert not {"long", "many", "deep"} & set(Sink.seen)
    assert [letter.reason for letter in letters] == ["malformed"] * 3
    details = " | ".join(letter.detail for letter in letters)
    assert "2000 bytes is over the limit of 1024 (max_header_bytes)" in details
    assert "more than 16 fields" in details
    assert "nested deeper than 4" in details
