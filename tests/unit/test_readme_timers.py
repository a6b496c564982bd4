"""The timer example of the README's "Messaging topologies" section runs as shown."""

from __future__ import annotations

import contextlib
import io

from tests.readme import code_blocks

SECTION = "Messaging topologies"


def test_the_timer_example_ticks_in_memory(memory_broker_url):
    code = next(b for b in code_blocks(SECTION) if "@timer(" in b)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_timers"})
    assert output.getvalue().splitlines() == ["True"]
