"""``python -m tests.fuzz --messages 100000``: a long campaign and its summary."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

from rpc.testing import VirtualHosts
from tests.fuzz.harness import FuzzedWorker, WorkerDied
from tests.fuzz.strategies import Message, messages

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200, help="messages per check")
    parser.add_argument(
        "--broker", default=os.environ.get("RPC_BROKER_URL", DEFAULT_URL)
    )
    parser.add_argument("--max-minutes", type=float, default=60.0)
    options = parser.parse_args(argv)
    batches = max(1, options.messages // options.batch)
    give_up = time.monotonic() + options.max_minutes * 60
    vhosts = VirtualHosts(options.broker)
    url = vhosts.create()
    log = Path(tempfile.mkdtemp(prefix="rpc-fuzz-")) / "worker.log"
    worker = FuzzedWorker(url, log)
    started = time.monotonic()
    failure = None
    reply_to = worker.publisher.reply_queue.encode()

    pending: list[Message] = []

    # One message per example, checked a batch at a time: an example of a whole
    # batch is more than Hypothesis draws in one go, and it would spend its time
    # making examples it then throws away.
    @settings(
        max_examples=batches * options.batch,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(messages(reply_to))
    def batch(message):
        if time.monotonic() > give_up:
            return
        pending.append(message)
        if len(pending) < options.batch:
            return
        worker.send(pending)
        pending.clear()
        worker.check()
        if worker.stats.batches % 10 == 0:
            print(
                f"{worker.stats.sent} messages, {time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )

    try:
        batch()
    except WorkerDied as exc:
        failure = exc
    finally:
        worker.close()
        vhosts.delete(url)
        vhosts.close()
    print(worker.stats.summary())
    print(f"elapsed                 {time.monotonic() - started:.0f} s")
    print(f"worker log              {log}")
    if failure is not None:
        print(f"FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
