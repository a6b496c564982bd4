"""The examples of the README's "Failure semantics" section run as shown."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

from rpc import Config, ServiceRunner, protocol
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.integration.test_poison import queue_info
from tests.integration.test_supervisor import wait_for
from tests.readme import README, code_blocks

SECTION = "Failure semantics"


#: Shell commands and the lines they print.
Transcript = list[tuple[list[str], list[str]]]


def transcript(first: str) -> Transcript:
    """The shell commands shown from ``first`` on: (command, output lines) pairs."""
    text = README.read_text()
    start = text.index(f"    $ {first}")
    shown: Transcript = []
    for line in text[start:].splitlines():
        if not line.startswith("    "):
            break
        if line.startswith("    $ "):
            command = shlex.split(line[6:].partition("  #")[0])
            shown.append((command, []))
        else:
            shown[-1][1].append(line[4:])
    return shown


def run_as_shown(
    broker_url: str, block: int, service: str, first: str
) -> tuple[Transcript, Transcript]:
    """Serve the class ``service`` of the section's ``block``-th example, run the
    commands shown from ``first`` on: (what they printed, what the README shows).
    """
    namespace: dict[str, Any] = {}
    exec(compile(code_blocks(SECTION)[block], "README.md", "exec"), namespace)
    shown = transcript(first)
    dead_letter_queue = protocol.dead_letter_queue(namespace[service].name)
    ran: Transcript = []
    with ServiceRunner([namespace[service]], Config(broker_url=broker_url)):
        for command, _ in shown:
            if command[1] == "dead-letters":
                wait_for(
                    "the dead letter",
                    lambda: queue_info(broker_url)[dead_letter_queue][1] == "1",
                )
            done = subprocess.run(
                rpc_command(*command[1:]),
                cwd=PROJECT_ROOT,
                env=project_env(broker_url),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            ran.append((command, (done.stdout + done.stderr).splitlines()))
    return ran, shown


def test_a_failing_event_handler_ends_in_the_dead_letter_queue_as_shown(broker_url):
    ran, shown = run_as_shown(broker_url, 0, "Mailer", "rpc dispatch shop")
    assert [command[:2] for command, _ in shown] == [
        ["rpc", "dispatch"],
        ["rpc", "dead-letters"],
    ]
    assert ran == shown


def test_a_failing_cast_ends_in_the_dead_letter_queue_as_shown(broker_url):
    ran, shown = run_as_shown(broker_url, 1, "Invoicer", "rpc cast invoicer")
    assert [command[:2] for command, _ in shown] == [
        ["rpc", "cast"],
        ["rpc", "dead-letters"],
    ]
    assert ran == shown
