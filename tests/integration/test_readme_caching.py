"""The README's "Caching results" example runs as shown, on RabbitMQ and Memcached."""

from __future__ import annotations

import contextlib
import io

from tests.readme import code_blocks

SECTION = "Caching results"
README_URL = "amqp://guest:guest@localhost:5672//"
README_SERVER = "127.0.0.1:11211"


def test_the_caching_example_prints_what_it_says(broker_url, memcached_servers):
    service, usage = code_blocks(SECTION)[:2]
    assert README_URL in usage and README_SERVER in usage
    usage = usage.replace(README_URL, broker_url).replace(
        README_SERVER, memcached_servers.addresses[0]
    )
    namespace: dict[str, object] = {"__name__": "readme_caching"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(service, "README.md", "exec"), namespace)
        exec(compile(usage, "README.md", "exec"), namespace)
    assert output.getvalue().splitlines() == [
        "{'id': 7, 'name': 'Ada'} {'id': 7, 'name': 'Ada'}",
        "1",
        "Ada",
        "grace",
        "2",
    ]
