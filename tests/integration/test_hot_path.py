"""Where the frames of a call are read and written, on the real RabbitMQ.

A call that finds the other side idle should cross no thread: the caller waiting for
its reply reads it itself, an idle handler thread reads the request it then runs,
and a reply leaves with its request's ack in one socket write.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from rpc import (
    AsyncClusterProxy,
    ClusterProxy,
    Config,
    ServiceRunner,
    event_handler,
    rpc,
)
from rpc.transport import BrokerConnection
from rpc.worker.dispatch import Work
from tests.integration.sample_services import Echo

#: AMQP method frame payload of basic.ack: class 60, method 80.
BASIC_ACK = b"\x00\x3c\x00\x50"


@pytest.fixture
def config(broker_url: str) -> Config:
    return Config(broker_url=broker_url, default_timeout=20, max_workers=4)


@pytest.fixture
def runner(config: Config) -> Iterator[ServiceRunner]:
    with ServiceRunner([Echo], config) as running:
        yield running


@pytest.fixture
def cluster(config: Config) -> Iterator[ClusterProxy]:
    with ClusterProxy(config=config) as proxy:
        yield proxy


def test_a_waiting_caller_reads_its_own_reply(runner, cluster):
    assert cluster.echo.echo("warm-up") == "warm-up"
    delivered_on: list[threading.Thread] = []
    for number in range(20):
        future = cluster.echo.echo.call_async(number)
        # Done callbacks run on the thread that read the reply.
        future.add_done_callback(
            lambda _: delivered_on.append(threading.current_thread())
        )
        assert future.result() == number
    assert delivered_on == [threading.current_thread()] * 20


def test_many_waiting_threads_share_the_reading(runner, cluster):
    # One of them reads at a time; the others get their replies handed over.
    results: dict[int, list[object]] = {}

    def calls(thread: int) -> None:
        results[thread] = [cluster.echo.echo([thread, n]) for n in range(30)]

    threads = [threading.Thread(target=calls, args=(t,)) for t in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert results == {t: [[t, n] for n in range(30)] for t in range(12)}


def test_an_idle_handler_thread_runs_the_request_it_read(runner, cluster):
    read_on: dict[str, int] = {}
    ran_on: dict[str, int] = {}
    pool = runner._dispatcher.pool
    submit, handle = pool.submit, pool._handle

    def reading(work: Work) -> None:
        # Called by the consumer callback, on the thread that read the request.
        read_on[work.delivery.correlation_id or ""] = threading.get_ident()
        submit(work)

    def running(work: Work) -> None:
        ran_on[work.delivery.correlation_id or ""] = threading.get_ident()
        handle(work)

    pool.submit = reading  # type: ignore[method-assign]
    pool._handle = running  # type: ignore[method-assign]
    assert cluster.echo.echo("warm-up") == "warm-up"
    ids = []
    for number in range(30):
        future = cluster.echo.echo.call_async(number)
        assert future.result() == number
        ids.append(future.correlation_id)
    same = [cid for cid in ids if read_on.get(cid) == ran_on.get(cid)]
    # The connection's own I/O thread may read one now and then (it takes the
    # socket back when no handler thread is waiting), but not as a rule.
    assert len(same) >= 25, (len(same), len(ids))


def test_a_reply_leaves_with_its_ack_in_one_write(runner, cluster):
    assert cluster.echo.echo("warm-up") == "warm-up"
    writes: list[bytes] = []
    transport: Any = runner._connection._link.connection.connection.transport  # type: ignore[union-attr]
    send = transport._write

    def recording(data: bytes) -> None:
        writes.append(bytes(data))
        send(data)

    transport._write = recording
    try:
        future = cluster.echo.echo.call_async("one write")
        assert future.result() == "one write"
    finally:
        transport._write = send
    with_reply = [w for w in writes if future.correlation_id.encode() in w]
    assert len(with_reply) == 1
    assert BASIC_ACK in with_reply[0]


class Interrupted(BaseException):
    """What KeyboardInterrupt is to a program's main thread, without pytest's care."""


def test_a_reader_interrupted_inside_a_read_leaves_no_half_read_frame(runner, cluster):
    # The caller reads its own reply: Ctrl-C (a signal handler's exception) can
    # stop it inside a read. The next reader must not start in the middle of a
    # frame: what was read stays buffered, and the link is made again anyway.
    assert cluster.echo.echo("warm-up") == "warm-up"
    reader: Any = cluster._connection._link.driver.reader  # type: ignore[union-attr]
    recv: Callable[[int], bytes] = reader._recv
    me = threading.current_thread()
    reads = 0

    def interrupted(size: int) -> bytes:
        nonlocal reads
        if threading.current_thread() is me:
            reads += 1
            if reads == 1:
                # The reply is on its way: part of it may be read, then Ctrl-C.
                data = recv(7)
                reader._buffer += data
                raise Interrupted
        return recv(size)

    reader._recv = interrupted
    try:
        future = cluster.echo.echo.call_async("interrupted")
        with pytest.raises(Interrupted):
            future.result()
    finally:
        reader._recv = recv
    assert reads == 1
    assert cluster.echo.echo.call_async("after").result(timeout=20) == "after"


class Busy:
    """Plain handlers that hold every handler thread, and what must still run."""

    name = "busy"
    gate: ClassVar[threading.Event] = threading.Event()
    holding: ClassVar[threading.Semaphore] = threading.Semaphore(0)
    events: ClassVar[queue.SimpleQueue[object]] = queue.SimpleQueue()

    @rpc
    def hold(self) -> bool:
        self.holding.release()
        return self.gate.wait(60)

    @rpc
    async def ping(self) -> str:
        return "pong"

    @event_handler("busy-source", "tick")
    async def on_tick(self, payload: object) -> None:
        self.events.put(payload)


def test_a_worker_with_every_handler_thread_busy_still_reads(config):
    # Nobody is idle to borrow the reading: the I/O thread must read, and what
    # needs no handler thread (an async handler, an async event handler, a
    # discovery request) is answered while the plain handlers run.
    Busy.gate.clear()
    with (
        ServiceRunner([Busy], config.replace(max_workers=2)),
        ClusterProxy(config=config) as cluster,
    ):
        held = [cluster.busy.hold.call_async() for _ in range(2)]
        for _ in range(2):
            assert Busy.holding.acquire(timeout=20)
        try:
            assert cluster.busy.ping.call_async().result(timeout=20) == "pong"
            cluster.dispatch("busy-source", "tick", 7, timeout=20)
            assert Busy.events.get(timeout=20) == 7

            async def discover() -> dict[str, Any]:
                async with AsyncClusterProxy(config=config) as proxy:
                    return await proxy.discover(wait=20)

            assert "busy" in asyncio.run(asyncio.wait_for(discover(), 60))
            assert not any(future.done() for future in held)
        finally:
            Busy.gate.set()
        assert [future.result(timeout=20) for future in held] == [True, True]


def test_the_io_thread_keeps_its_periodic_work_while_a_borrower_reads(broker_url):
    # A borrower may take the socket just after the I/O thread decided to read
    # it (it had seen nobody reading): the I/O thread must step aside then too,
    # not wait out the whole borrowed read without its periodic work (a proxy
    # expires calls and sends lost ones again there).
    ticks: queue.SimpleQueue[int] = queue.SimpleQueue()
    connection = BrokerConnection(
        broker_url,
        name="ticking",
        on_connect=lambda channel: None,
        on_tick=lambda: ticks.put(1),
    )
    connection.start()
    try:
        assert ticks.get(timeout=20)
        # What such a borrower holds: the read token, without the borrowed flag
        # the I/O thread looked at before.
        with connection._reading.token:
            while not ticks.empty():
                ticks.get_nowait()
            for _ in range(2):
                assert ticks.get(timeout=20)
    finally:
        connection.stop()


def test_a_large_reply_leaves_frame_by_frame(runner, cluster):
    # A socket write must finish within the write timeout as a whole: a large
    # reply joined into one write would need the whole of it to go out in that
    # time, where each of its frames used to have it.
    assert cluster.echo.echo("warm-up") == "warm-up"
    raw: Any = runner._connection._link.connection.connection  # type: ignore[union-attr]
    transport = raw.transport
    writes: list[int] = []
    send = transport._write

    def recording(data: bytes) -> None:
        writes.append(len(data))
        send(data)

    large = "x" * (4 * raw.frame_max)
    transport._write = recording
    try:
        assert cluster.echo.echo.call_async(large).result(timeout=20) == large
    finally:
        transport._write = send
    assert len(writes) > 1
    assert max(writes) <= raw.frame_max


def test_synchronous_methods_beside_the_reader_leave_the_link_alone(broker_url):
    # A synchronous AMQP method under channel() (a passive declare here, basic.get
    # in `rpc dead-letters`) reads its own answer while holding the lock. The I/O
    # thread, waiting for that lock after select() saw those very bytes, must
    # look again instead of blocking in recv() until the read timeout drops the link.
    queue_name = "sync-beside-reader"
    received: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def set_up(channel: Any) -> None:
        channel.queue_declare(queue=queue_name, auto_delete=True)
        connection.consume(
            channel, queue_name, lambda d: received.put(d.body), no_ack=True
        )

    connection = BrokerConnection(broker_url, name="sync-beside", on_connect=set_up)
    connection.start()
    try:
        generation = connection.generation
        for number in range(150):
            connection.publish(
                str(number).encode(),
                exchange="",
                routing_key=queue_name,
                content_type="text/plain",
            )
            with connection.channel() as channel:
                channel.queue_declare(queue=queue_name, passive=True)
        for number in range(150):
            assert received.get(timeout=20) == str(number).encode()
        assert connection.generation == generation, "the link was dropped and remade"
    finally:
        connection.stop()
