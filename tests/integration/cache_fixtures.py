"""Three private Memcached servers on free loopback ports, for the cache tests.

Each test gets them fresh (a restart is a few milliseconds), so no test sees what
another one cached, and a test may kill one of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpc.cache.servers import LocalMemcached


@pytest.fixture
def memcached_servers() -> Iterator[LocalMemcached]:
    with LocalMemcached(3, memory_mb=16) as servers:
        yield servers
