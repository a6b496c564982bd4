"""Pure parts of the supervisor: restart backoff and the process count."""

from __future__ import annotations

import os

import pytest

from rpc import ConfigError
from rpc.supervisor import MAX_RESTART_DELAY, process_count, restart_delay


def test_restart_delay_doubles_from_the_first_crash():
    assert [restart_delay(n) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]


def test_restart_delay_is_capped():
    assert restart_delay(50) == MAX_RESTART_DELAY
    assert restart_delay(3, first=1.0, maximum=3.0) == 3.0


def test_process_count():
    assert process_count("3") == 3
    assert process_count(2) == 2
    cpus = len(os.sched_getaffinity(0))
    assert process_count("auto") == cpus
    assert process_count(" AUTO ") == cpus


@pytest.mark.parametrize("bad", ["0", "-2", "many", ""])
def test_process_count_rejects_nonsense(bad):
    with pytest.raises(ConfigError):
        process_count(bad)
