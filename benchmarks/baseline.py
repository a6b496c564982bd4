"""The yardstick: request/reply over direct reply-to with Kombu alone, no framework.

This is what a careful programmer writes by hand: one connection, one channel, a
consumer on ``amq.rabbitmq.reply-to`` matched by correlation id, JSON bodies. The
server acknowledges after replying, like the framework's worker. Run a server with
``python -m benchmarks.baseline URL QUEUE``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu
import orjson

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
CONTENT_TYPE = "application/json"
#: Unacknowledged requests one server holds: the framework worker's default too.
PREFETCH = 10


#: Where the baseline's casts and events go, beside its request queue.
EVENTS_EXCHANGE = "baseline.events"
EVENT_ROUTING_KEY = "benchsource.tick"


def sink_queue(queue: str) -> str:
    return f"{queue}-sink"


def events_queue(queue: str) -> str:
    return f"{queue}-events"


def serve(url: str, queue: str, prefetch: int = PREFETCH) -> None:
    """Answer requests on ``queue`` until SIGTERM: reply with the first argument.

    Casts (on the sink queue) and events (through a topic exchange) are consumed and
    counted; a request with ``{"seen": true}`` as kwargs gets the counts.
    """
    stopping = False
    seen = {"casts": 0, "events": 0}

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        channel.basic_qos(0, prefetch, False)
        channel.queue_declare(queue=queue, durable=False, auto_delete=False)
        channel.queue_declare(queue=sink_queue(queue), durable=True, auto_delete=False)
        channel.exchange_declare(
            exchange=EVENTS_EXCHANGE, type="topic", durable=True, auto_delete=False
        )
        channel.queue_declare(
            queue=events_queue(queue), durable=True, auto_delete=False
        )
        channel.queue_bind(
            queue=events_queue(queue),
            exchange=EVENTS_EXCHANGE,
            routing_key=EVENT_ROUTING_KEY,
        )

        def on_request(message: Any) -> None:
            request = orjson.loads(message.body)
            if request.get("kwargs", {}).get("seen"):
                result: Any = seen
            else:
                result = (request.get("args") or [None])[0]
            body = orjson.dumps({"result": result})
            reply = channel.prepare_message(
                body,
                None,
                CONTENT_TYPE,
                "utf-8",
                {},
                {"correlation_id": message.properties["correlation_id"]},
            )
            channel.basic_publish(
                reply, exchange="", routing_key=message.properties["reply_to"]
            )
            channel.basic_ack(message.delivery_tag)

        def counter(kind: str) -> Callable[[Any], None]:
            def on_message(message: Any) -> None:
                orjson.loads(message.body)
                seen[kind] += 1
                channel.basic_ack(message.delivery_tag)

            return on_message

        channel.basic_consume(queue=queue, callback=on_request)
        channel.basic_consume(queue=sink_queue(queue), callback=counter("casts"))
        channel.basic_consume(queue=events_queue(queue), callback=counter("events"))
        while not stopping:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=0.5)


class BaselineClient:
    """Calls over one channel; ``run`` keeps ``in_flight`` requests outstanding."""

    def __init__(self, url: str) -> None:
        self.connection = kombu.Connection(url)
        self.connection.connect()
        self.channel = self.connection.channel()
        self._pending: set[str] = set()
        self._done = 0
        self._result: Any = None
        self._confirm_channel: Any = None
        self.channel.basic_consume(
            queue=DIRECT_REPLY_TO, no_ack=True, callback=self._reply
        )

    def close(self) -> None:
        self.connection.release()

    def _reply(self, message: Any) -> None:
        # py-amqp reads frames inside basic_publish too, so this runs re-entrantly:
        # it only counts, and the loop in run() publishes.
        correlation_id = message.properties.get("correlation_id")
        if correlation_id in self._pending:
            self._pending.discard(correlation_id)
            self._result = orjson.loads(message.body)["result"]
            self._done += 1

    def _send(self, queue: str, body: bytes) -> None:
        correlation_id = uuid.uuid4().hex
        self._pending.add(correlation_id)
        message = self.channel.prepare_message(
            body,
            None,
            CONTENT_TYPE,
            "utf-8",
            {},
            {"correlation_id": correlation_id, "reply_to": DIRECT_REPLY_TO},
        )
        self.channel.basic_publish(message, exchange="", routing_key=queue)

    def run(
        self,
        queue: str,
        calls: int,
        *,
        in_flight: int = 1,
        payload: str | None = None,
        timeout: float = 300.0,
        latencies: list[int] | None = None,
    ) -> float:
        """Make ``calls`` calls, ``in_flight`` at a time; return the seconds taken.

        With ``latencies``, calls go one at a time and each round trip is appended
        in nanoseconds.
        """
        args = [] if payload is None else [payload]
        body = orjson.dumps({"args": args, "kwargs": {}})
        self._done = sent = 0
        start = time.perf_counter()
        deadline = start + timeout
        if latencies is not None:
            for _ in range(calls):
                began = time.perf_counter_ns()
                sent += 1
                self._send(queue, body)
                while self._done < sent:
                    self._drain(deadline)
                latencies.append(time.perf_counter_ns() - began)
        else:
            while self._done < calls:
                while sent < calls and sent - self._done < in_flight:
                    sent += 1
                    self._send(queue, body)
                if self._done < sent:
                    self._drain(deadline)
        return time.perf_counter() - start

    def seen(self, queue: str, timeout: float = 60.0) -> dict[str, int]:
        """Casts and events the server has consumed so far."""
        self._done = 0
        self._send(queue, orjson.dumps({"args": [], "kwargs": {"seen": True}}))
        deadline = time.perf_counter() + timeout
        while self._done < 1:
            self._drain(deadline)
        return dict(self._result)

    def publish_confirmed(
        self, kind: str, queue: str, messages: int, timeout: float = 300.0
    ) -> float:
        """Publish persistent messages one by one, each confirmed by the broker,
        and wait until the server has consumed them all; return the seconds taken.
        """
        if self._confirm_channel is None:
            self._confirm_channel = self.connection.channel()
        if kind == "casts":
            exchange, routing_key = "", sink_queue(queue)
        else:
            exchange, routing_key = EVENTS_EXCHANGE, EVENT_ROUTING_KEY
        before = self.seen(queue)[kind]
        start = time.perf_counter()
        deadline = start + timeout
        for number in range(messages):
            message = self._confirm_channel.prepare_message(
                orjson.dumps(number),
                None,
                CONTENT_TYPE,
                "utf-8",
                {},
                {"delivery_mode": 2},
            )
            self._confirm_channel.basic_publish_confirm(
                message, exchange=exchange, routing_key=routing_key, mandatory=True
            )
        while self.seen(queue)[kind] - before < messages:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the baseline server did not consume its {kind}")
            time.sleep(0.002)
        return time.perf_counter() - start

    def _drain(self, deadline: float) -> None:
        if time.perf_counter() > deadline:
            raise TimeoutError("the baseline server did not answer in time")
        with contextlib.suppress(TimeoutError):
            self.connection.drain_events(timeout=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("--prefetch", type=int, default=PREFETCH)
    options = parser.parse_args()
    serve(options.url, options.queue, options.prefetch)


if __name__ == "__main__":
    main()
