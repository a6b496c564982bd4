"""The broker restarts under load: everything resumes by itself, nothing hangs.

Each test runs its own RabbitMQ node (``private_broker``), so stopping or killing it
leaves the shared broker alone.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from rpc import BrokerError, ClusterProxy, Config, ServiceRunner
from tests.integration import fixtures
from tests.integration.daemons import daemons
from tests.integration.faults import RabbitNode, wait_for
from tests.integration.ledger_service import Ledger

#: The calls' deadline: a call that fails must fail long before it.
DEADLINE = 90.0


@pytest.fixture(params=["classic"])
def queue_type(request: pytest.FixtureRequest) -> str:
    """Service queues are classic unless a test asks for quorum ones too."""
    return str(request.param)


@pytest.fixture
def config(private_broker: RabbitNode, queue_type: str) -> Config:
    return Config(
        broker_url=private_broker.url,
        default_timeout=DEADLINE,
        max_workers=8,
        heartbeat=5,
        queue_type=queue_type,
    )


# Shared fixtures: Ledger in this process, a client, both on this module's config.
runner, cluster = fixtures.runner, fixtures.cluster


class Load:
    """Threads that call without pause and record what each call did."""

    def __init__(self, cluster: ClusterProxy, threads: int = 4) -> None:
        self.cluster = cluster
        self.outcomes: list[tuple[str, str, float, object]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=DEADLINE + 30)
        assert not any(t.is_alive() for t in self._threads), "a call hung"

    def ok(self) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o[1] == "ok")

    def _run(self, idempotent: bool) -> None:
        kind = "lookup" if idempotent else "record"
        for _ in range(1000):  # bounded; the test stops it much sooner
            if self._stop.is_set():
                return
            token = uuid.uuid4().hex
            started = time.monotonic()
            try:
                value = getattr(self.cluster.ledger, kind)(token, seconds=0.3)
                outcome = "ok"
            except BrokerError as exc:
                value, outcome = exc, "broker"
            except Exception as exc:
                value, outcome = exc, "other"
            with self._lock:
                self.outcomes.append((kind, outcome, time.monotonic() - started, value))


@pytest.mark.parametrize(
    ("how", "queue_type"),
    [("stop", "classic"), ("kill", "classic"), ("stop", "quorum")],
    indirect=["queue_type"],
)
def test_calls_resume_after_a_broker_restart_under_load(
    private_broker, runner, cluster, how
):
    cluster.ledger.lookup("learn")  # the proxy learns lookup is idempotent
    with Load(cluster) as load:
        wait_for(lambda: load.ok() >= 8, 60, "calls before the restart")
        before = len(load.outcomes)
        down = time.monotonic()
        if how == "stop":
            private_broker.stop()
        else:
            private_broker.kill()  # no goodbye: sockets reset
        private_broker.start()
        outage = time.monotonic() - down
        wait_for(lambda: load.ok() >= before + 16, DEADLINE, "calls after the restart")

    outcomes = load.outcomes
    # Every call either completed or failed with a clear BrokerError: none waited
    # for its deadline, none failed with anything else.
    assert not [o for o in outcomes if o[1] == "other"], outcomes
    failed = [o for o in outcomes if o[1] == "broker"]
    assert all(duration < DEADLINE / 3 for _, _, duration, _ in failed), failed
    # Idempotent calls never failed: the proxy sent them again.
    assert not [o for o in failed if o[0] == "lookup"], failed
    # The restart hit calls in flight: some failed, or were run again.
    retried = [
        o for o in outcomes if o[0] == "lookup" and o[1] == "ok" and o[3]["redelivered"]
    ]
    assert failed or retried
    print(
        f"broker {how} + start: {outage:.1f}s; {len(outcomes)} calls, "
        f"{len(failed)} failed with BrokerError (slowest after "
        f"{max((o[2] for o in failed), default=0):.1f}s), {len(retried)} resent"
    )
    # Worker and proxy reconnected by themselves.
    assert runner.connected
    assert cluster.ledger.record("after") == "after"


def test_a_daemon_resumes_after_the_broker_crashes(private_broker, cluster):
    with daemons(private_broker.url, ["tests.integration.ledger_service:Ledger"]):
        wait_for(lambda: _answers(cluster), 60, "the daemon to serve")
        private_broker.kill()
        private_broker.start()
        # Idempotent, so it waits out the daemon's reconnection instead of failing.
        token = uuid.uuid4().hex
        result = cluster.ledger.lookup.with_options(timeout=DEADLINE)(token)
        assert result["token"] == token


def _answers(cluster: ClusterProxy) -> bool:
    try:
        return cluster.ledger.record.with_options(timeout=5)("ping") == "ping"
    except Exception:
        return False


def test_confirmed_casts_survive_a_broker_restart(private_broker, config):
    # The queue exists (durable) but no worker runs while the broker restarts.
    idle = ServiceRunner([Ledger], config)
    idle.start()
    idle.stop()
    names = [uuid.uuid4().hex for _ in range(20)]
    with ClusterProxy(config=config) as caller:
        for token in names:
            caller.ledger.record.cast(token)  # returns once the broker confirmed it

    private_broker.kill()
    private_broker.start()

    with ServiceRunner([Ledger], config):
        wait_for(
            lambda: all(Ledger.count(t) == 1 for t in names),
            60,
            "every confirmed cast to run after the restart",
        )
