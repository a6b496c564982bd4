"""``rpc dead-letters``: what it prints says how many the queue holds."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rpc import cli, deadletter, protocol
from rpc import dead_letters as dead_letter_tool


def letters(count: int) -> list[dead_letter_tool.DeadLetter]:
    headers = {protocol.HEADER_DEATH_REASON: deadletter.REASON_MALFORMED}
    return [
        dead_letter_tool.DeadLetter(body=b"{}", headers=headers, content_type=None)
        for _ in range(count)
    ]


@pytest.fixture
def queue_of(monkeypatch):
    def holding(waiting: int):
        def look(config, service, *, limit, requeue, progress=None):
            return dead_letter_tool.Listing(letters(min(limit, waiting)), waiting)

        monkeypatch.setattr(dead_letter_tool, "look", look)

    return holding


def run(*args: str):
    return CliRunner().invoke(
        cli.main, ["dead-letters", "svc", "--broker", "memory://", *args]
    )


def test_a_queue_longer_than_the_limit_says_how_many_it_holds_and_printed(queue_of):
    queue_of(878)
    result = run()
    assert result.exit_code == 0, result.output
    assert (
        "878 message(s) in the dead-letter queue, 100 printed (--limit 100)"
        in result.output
    )
    assert result.output.count("malformed\t") == 100


def test_a_queue_printed_whole_says_how_many_it_holds(queue_of):
    queue_of(3)
    result = run("--limit", "5")
    assert result.output.splitlines()[-1] == "3 message(s) in the dead-letter queue"
