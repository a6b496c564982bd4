"""A live worker under fire: publish hostile frames, then check it still serves."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import amqp
import orjson
import psutil

from rpc import ClusterProxy, protocol
from rpc.transport import BrokerConnection, Delivery
from tests.fuzz import frames
from tests.fuzz.strategies import SERVICE, Message
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command, stop

#: Seconds a batch's messages may take to leave the worker's queues.
DRAIN_TIMEOUT = 30.0
#: Seconds the health check's call may take: a worker that cannot answer is deaf.
CALL_TIMEOUT = 2.0
#: How much resident memory may grow over the first check's, in bytes.
RSS_GROWTH = 128 * 1024 * 1024
#: Channels a publisher opens on one connection before it starts on a new one.
CHANNELS_PER_CONNECTION = 1000
QUEUES = (
    protocol.service_queue(SERVICE),
    protocol.event_queue(SERVICE, "on_anything", protocol.SERVICE_POOL, ""),
)


class WorkerDied(AssertionError):
    """The worker process is gone, was replaced, went deaf or grew without bound."""


@dataclasses.dataclass
class Stats:
    """What one campaign saw."""

    sent: int = 0
    refused_by_broker: int = 0
    reconnections: int = 0
    batches: int = 0
    replies: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    dead_lettered: int = 0
    first_rss: int = 0
    max_rss: int = 0
    worker_deaths: int = 0
    deaf_periods: int = 0

    def summary(self) -> str:
        replies = ", ".join(f"{kind} {n}" for kind, n in self.replies.most_common())
        return "\n".join(
            [
                f"messages published      {self.sent}",
                f"refused by the broker   {self.refused_by_broker}",
                f"publisher reconnections {self.reconnections}",
                f"batches checked         {self.batches}",
                f"replies                 {replies or 'none'}",
                f"dead-lettered           {self.dead_lettered}",
                f"worker deaths           {self.worker_deaths}",
                f"deaf periods            {self.deaf_periods}",
                f"worker RSS              {self.first_rss / 2**20:.1f} MiB at the "
                f"first check, {self.max_rss / 2**20:.1f} MiB at most",
            ]
        )


class RawPublisher:
    """A py-amqp connection that writes hand-made publish frames.

    After each message a round trip on the channel (basic.qos) tells whether the
    broker took it: RabbitMQ answers a channel's frames in order, so a message it
    refuses closes the channel before the answer comes. The channel, or the whole
    connection, is then opened again.
    """

    def __init__(self, broker_url: str, stats: Stats) -> None:
        url = urllib.parse.urlsplit(broker_url)
        vhost = urllib.parse.unquote(url.path[1:] or "/") or "/"
        self._options = {
            "host": f"{url.hostname or '127.0.0.1'}:{url.port or 5672}",
            "userid": urllib.parse.unquote(url.username or "guest"),
            "password": urllib.parse.unquote(url.password or "guest"),
            "virtual_host": vhost,
        }
        self._stats = stats
        self._connection: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._channels_opened = 0
        self.reply_queue = f"fuzz-replies-{time.monotonic_ns()}"
        self._open()

    def _open(self) -> None:
        self.close()
        connection = amqp.Connection(
            **self._options, connect_timeout=10, read_timeout=10
        )
        connection.connect()
        self._connection = connection
        self._channels_opened = 0
        self._channel = connection.channel()
        self._channel.queue_declare(self.reply_queue, durable=False, auto_delete=False)

    @property
    def channel(self) -> amqp.Channel:
        assert self._channel is not None
        return self._channel

    def publish(self, message: Message) -> None:
        connection = self._connection
        assert connection is not None
        data = frames.message(
            self.channel.channel_id,
            message.exchange,
            message.routing_key,
            message.properties,
            message.body,
            frame_max=connection.frame_max,
        )
        self._stats.sent += 1
        try:
            connection.transport.write(data)
            self.channel.basic_qos(0, 0, False)
        except amqp.ChannelError:
            self._stats.refused_by_broker += 1
            self._new_channel()
        except Exception:
            # The broker closed the whole connection (a 541 for some messages), or
            # py-amqp could not read its answer: start again on a new one.
            self._stats.refused_by_broker += 1
            self._stats.reconnections += 1
            self._open()

    def _new_channel(self) -> None:
        """A channel in place of one the broker closed.

        py-amqp does not give back the number of a channel the broker closed, so a
        long campaign would run out of channel numbers (2,047) on one connection:
        past a thousand, the fuzzer starts on a new connection.
        """
        self._channels_opened += 1
        if self._channels_opened >= CHANNELS_PER_CONNECTION:
            self._stats.reconnections += 1
            self._open()
            return
        assert self._connection is not None
        self._channel = self._connection.channel()

    def depth(self, queue: str) -> tuple[int, int]:
        """Messages ready in ``queue`` and its consumers."""
        _, messages, consumers = self.channel.queue_declare(queue, passive=True)
        return messages, consumers

    def purge(self, queue: str) -> int:
        try:
            return int(self.channel.queue_purge(queue) or 0)
        except amqp.NotFound:
            self._new_channel()
            return 0

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


class ReplyReader:
    """Takes the worker's replies off the fuzzer's reply queue as they come.

    Through rpc's own transport, not py-amqp: a reply echoes the request's
    correlation id byte for byte, which py-amqp cannot read when it is not UTF-8.
    """

    def __init__(self, broker_url: str, queue: str) -> None:
        self._lock = threading.Lock()
        self._bodies: list[bytes] = []
        self._connection = BrokerConnection(
            broker_url,
            name="fuzz-replies",
            heartbeat=0,
            on_connect=lambda channel: self._connection.consume(
                channel, queue, self._collect, no_ack=True
            ),
        )
        self._connection.start()

    def _collect(self, delivery: Delivery) -> None:
        with self._lock:
            self._bodies.append(delivery.body)

    def take(self) -> list[bytes]:
        with self._lock:
            bodies, self._bodies = self._bodies, []
        return bodies

    def close(self) -> None:
        self._connection.stop()


class FuzzedWorker:
    """One ``rpc run`` daemon of the target service, and the checks it must pass."""

    def __init__(self, broker_url: str, log_path: Path) -> None:
        self.broker_url = broker_url
        self.log_path = log_path
        self.stats = Stats()
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            rpc_command("run", "tests.fuzz.target:Fuzzed", "--max-workers", "4"),
            cwd=PROJECT_ROOT,
            env=project_env(broker_url),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.pid = self.process.pid
        self.cluster = ClusterProxy(broker_url, timeout=CALL_TIMEOUT)
        self.publisher = RawPublisher(broker_url, self.stats)
        self.replies = ReplyReader(broker_url, self.publisher.reply_queue)
        self._wait_until_serving(timeout=30.0)

    def _wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.cluster.fuzz.echo("ready") == "ready":
                    return
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
            time.sleep(0.1)

    def send(self, messages: Iterable[Message]) -> None:
        for message in messages:
            self.publisher.publish(message)

    def check(self) -> None:
        """The worker is the same process, has drained its queues, answers a normal
        call within :data:`CALL_TIMEOUT` and stays within its memory bound."""
        stats = self.stats
        stats.batches += 1
        if self.process.poll() is not None:
            stats.worker_deaths += 1
            raise WorkerDied(f"the worker exited with {self.process.returncode}")
        self._drain()
        try:
            answer = self.cluster.fuzz.echo("still there?")
        except Exception as exc:
            stats.deaf_periods += 1
            raise WorkerDied(f"the worker is alive but deaf: {exc!r}") from exc
        if answer != "still there?":
            raise WorkerDied(f"the health call got {answer!r}")
        rss = psutil.Process(self.pid).memory_info().rss
        stats.first_rss = stats.first_rss or rss
        stats.max_rss = max(stats.max_rss, rss)
        if rss > stats.first_rss + RSS_GROWTH:
            raise WorkerDied(f"resident memory grew to {rss / 2**20:.0f} MiB")
        for body in self.replies.take():
            stats.replies[_reply_kind(body)] += 1
        stats.dead_lettered += self.publisher.purge(protocol.dead_letter_queue(SERVICE))

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            depths = {queue: self.publisher.depth(queue) for queue in QUEUES}
            if all(messages == 0 for messages, _ in depths.values()):
                consumers = [c for _, c in depths.values()]
                if min(consumers) < 1:
                    raise WorkerDied(f"a queue has lost its consumer: {depths}")
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise WorkerDied(f"queues did not drain: {depths}")
            time.sleep(0.05)

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.publisher.close()
        self.replies.close()
        self.cluster.stop()
        stop([self.process])
        self._log.close()


def _reply_kind(body: bytes) -> str:
    """The documented shape of a reply: ``result`` and ``error``; else "not a reply"."""
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(reply, dict) or set(reply) - {"result", "error"}:
        return "not a reply"
    error = reply.get("error")
    if error is None:
        return "result"
    if not isinstance(error, dict) or not isinstance(error.get("type"), str):
        return "malformed error"
    return str(error["type"])
