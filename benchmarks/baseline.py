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
import socket
import time
import uuid
from typing import Any

import kombu
import orjson

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
CONTENT_TYPE = "application/json"
#: Unacknowledged requests one server holds: the framework worker's default too.
PREFETCH = 10


def serve(url: str, queue: str, prefetch: int = PREFETCH) -> None:
    """Answer requests on ``queue`` until SIGTERM: reply with the first argument."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        channel.basic_qos(0, prefetch, False)
        channel.queue_declare(queue=queue, durable=False, auto_delete=False)

        def on_request(message: Any) -> None:
            request = orjson.loads(message.body)
            args = request.get("args") or [None]
            body = orjson.dumps({"result": args[0]})
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

        channel.basic_consume(queue=queue, callback=on_request)
        while not stopping:
            with contextlib.suppress(socket.timeout):
                connection.drain_events(timeout=0.5)


class BaselineClient:
    """Calls over one channel; ``run`` keeps ``in_flight`` requests outstanding."""

    def __init__(self, url: str) -> None:
        self.connection = kombu.Connection(url)
        self.connection.connect()
        self.channel = self.connection.channel()
        self._pending: set[str] = set()
        self._done = 0
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
            orjson.loads(message.body)
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

    def _drain(self, deadline: float) -> None:
        if time.perf_counter() > deadline:
            raise TimeoutError("the baseline server did not answer in time")
        with contextlib.suppress(socket.timeout):
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
