"""The example of the README's "Failure semantics" section runs as shown."""

from __future__ import annotations

import shlex
import subprocess

from rpc import Config, ServiceRunner
from tests.integration.daemons import PROJECT_ROOT, project_env, rpc_command
from tests.integration.test_poison import queue_info
from tests.integration.test_supervisor import wait_for
from tests.readme import README, code_blocks

SECTION = "Failure semantics"


def transcript() -> list[tuple[list[str], list[str]]]:
    """The shell commands shown after the example: (command, output lines) pairs."""
    text = README.read_text()
    start = text.index("    $ rpc dispatch shop orders.created")
    shown: list[tuple[list[str], list[str]]] = []
    for line in text[start:].splitlines():
        if not line.startswith("    "):
            break
        if line.startswith("    $ "):
            command = shlex.split(line[6:].partition("  #")[0])
            shown.append((command, []))
        else:
            shown[-1][1].append(line[4:])
    return shown


def test_a_failing_event_handler_ends_in_the_dead_letter_queue_as_shown(broker_url):
    namespace: dict[str, object] = {}
    exec(compile(code_blocks(SECTION)[0], "README.md", "exec"), namespace)
    shown = transcript()
    assert [command[:2] for command, _ in shown] == [
        ["rpc", "dispatch"],
        ["rpc", "dead-letters"],
    ]
    outputs = []
    with ServiceRunner([namespace["Mailer"]], Config(broker_url=broker_url)):
        for command, _ in shown:
            if command[1] == "dead-letters":
                wait_for(
                    "the dead letter",
                    lambda: queue_info(broker_url)["rpc-mailer.dead-letter"][1] == "1",
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
            outputs.append((done.stdout + done.stderr).splitlines())
    assert outputs == [output for _, output in shown]
