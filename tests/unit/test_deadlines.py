"""In memory too, a request whose caller's deadline passed is never run.

The memory transport has no per-message expiration: the request waits in its queue,
and the worker that takes it drops it by its ``x-rpc-deadline`` header.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from rpc import CallTimeoutError, rpc
from rpc.testing import ServiceCluster

_started = threading.Event()
_release = threading.Event()
_ran: list[str] = []


class Turnstile:
    name = "turnstile"

    @rpc
    def hold(self) -> None:
        _started.set()
        _release.wait(30)

    @rpc
    def record(self, token: str) -> str:
        _ran.append(token)
        return token


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    _started.clear()
    _release.clear()
    _ran.clear()
    yield
    _release.set()


def test_a_request_queued_behind_a_slow_one_past_its_deadline_is_dropped(
    rpc_cluster: ServiceCluster, caplog: pytest.LogCaptureFixture
):
    rpc_cluster.start(Turnstile, max_workers=1)  # one at a time: the rest queue up
    held = rpc_cluster.proxy.turnstile.hold.with_options(timeout=60).call_async()
    assert _started.wait(30)
    with pytest.raises(CallTimeoutError):
        rpc_cluster.proxy.turnstile.record.with_options(timeout=0.2)("late")
    with caplog.at_level("INFO", logger="rpc.worker"):
        _release.set()
        held.result()
        assert rpc_cluster.proxy.turnstile.record("fresh") == "fresh"
    assert _ran == ["fresh"]  # "late" was taken first, and dropped
    assert "turnstile.record: dropped, its caller's deadline passed" in caplog.text


def test_a_request_nobody_took_before_its_deadline_is_dropped(
    rpc_cluster: ServiceCluster,
):
    rpc_cluster.start(Turnstile).stop()  # its queue stays, as a durable queue does
    with pytest.raises(CallTimeoutError):
        rpc_cluster.proxy.turnstile.record.with_options(timeout=0.2)("late")
    rpc_cluster.start(Turnstile)
    assert rpc_cluster.proxy.turnstile.record("fresh") == "fresh"
    assert _ran == ["fresh"]
