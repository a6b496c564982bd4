"""Scatter-gather: map runs calls across workers, results come in input order."""

from __future__ import annotations

import pytest

from rpc import RemoteError, UnknownServiceError
from tests.integration import topology_fixtures as fixtures
from tests.integration.topology_services import Square

# Shared fixtures: a config on the test's vhost, runners, a recorder, a client.
config, record = fixtures.config, fixtures.record
runners, cluster = fixtures.runners, fixtures.cluster


def test_map_yields_results_in_input_order_from_several_workers(
    runners, cluster, record
):
    runners.start(Square)
    runners.start(Square)
    # Later items finish first: the order must come from the input, not arrival.
    items = list(range(30))
    results = list(cluster.square.square.starmap([x, 0.1 - x / 300] for x in items))
    assert results == [x * x for x in items]
    assert len(record.per_worker("square")) == 2


def test_map_passes_each_item_as_the_one_argument(runners, cluster):
    runners.start(Square)
    assert list(cluster.square.square.map(range(10))) == [x * x for x in range(10)]


def test_starmap_takes_keyword_dicts(runners, cluster):
    runners.start(Square)
    items = [{"x": 2, "exponent": 3}, {"x": 3}, [2, 10]]
    assert list(cluster.square.power.starmap(items)) == [8, 9, 1024]


def test_calls_in_flight_stay_within_the_bound(runners, cluster, record):
    runners.start(Square, max_workers=8)
    results = list(
        cluster.square.square.starmap(([x, 0.05] for x in range(24)), max_in_flight=3)
    )
    assert results == [x * x for x in range(24)]
    assert 1 <= record.most_running <= 3


def test_the_first_error_fails_fast_and_cancels_the_rest(runners, cluster, record):
    runners.start(Square, max_workers=2)
    items = [1, -1, *range(2, 40)]
    results = cluster.square.square.starmap(([x, 0.05] for x in items), max_in_flight=2)
    with pytest.raises(RemoteError, match="negative: -1"):
        list(results)
    # Nothing past the window was sent once the error came back.
    assert len(record.of("square")) < 10


def test_return_exceptions_puts_errors_in_place(runners, cluster):
    runners.start(Square)
    results = list(cluster.square.square.map([1, -2, 3], return_exceptions=True))
    assert results[0] == 1 and results[2] == 9
    assert isinstance(results[1], RemoteError)
    assert results[1].message == "negative: -2"


def test_map_on_an_unknown_service_raises(cluster):
    with pytest.raises(UnknownServiceError):
        list(cluster.nobody.work.map([1, 2]))
