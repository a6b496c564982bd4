"""The README's "Caching results" test example runs as shown, in memory."""

from __future__ import annotations

import contextlib
import io

from tests.readme import code_blocks

SECTION = "Caching results"


def test_the_in_memory_cache_example_counts_a_hit(memory_broker_url):
    service, *_, testing = code_blocks(SECTION)
    assert "MemoryBackend" in testing
    namespace: dict[str, object] = {"__name__": "readme_caching"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(service, "README.md", "exec"), namespace)
        exec(compile(testing, "README.md", "exec"), namespace)
    assert output.getvalue().splitlines() == ["1"]
    assert namespace["QUERIES"] == {"display_name": 1}
