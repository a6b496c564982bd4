"""Hostile frames from a raw AMQP connection into a live worker on RabbitMQ.

Each Hypothesis example is a batch of messages; after each, the worker must be the
same process, have drained its queues, answer a normal call within 2 s and keep its
memory bounded (tests/fuzz/harness.py). The batch count is bounded for the suite;
``python -m tests.fuzz`` runs the long campaign.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import FuzzedWorker
from tests.fuzz.strategies import messages

BATCHES = 300


@pytest.fixture(scope="module")
def fuzzed(rpc_vhosts, tmp_path_factory):
    url = rpc_vhosts.create()
    worker = FuzzedWorker(url, tmp_path_factory.mktemp("fuzz") / "worker.log")
    try:
        yield worker
    finally:
        worker.close()
        rpc_vhosts.delete(url)


def test_the_worker_survives_hostile_messages(fuzzed):
    reply_to = fuzzed.publisher.reply_queue.encode()

    @settings(
        max_examples=BATCHES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(messages(reply_to), min_size=5, max_size=25))
    def batch(sent):
        fuzzed.send(sent)
        fuzzed.check()

    batch()
    stats = fuzzed.stats
    assert stats.batches == BATCHES
    assert stats.worker_deaths == stats.deaf_periods == 0
    assert fuzzed.process.pid == fuzzed.pid and fuzzed.process.poll() is None
    # Whatever came back was a reply of the documented shape.
    assert not {"not JSON", "not a reply", "malformed error"} & set(stats.replies)
    # No reading thread died on the way, even for a moment.
    log = fuzzed.log_text()
    assert not re.search(r"Exception in thread|consumer callback failed", log), log[
        -3000:
    ]
