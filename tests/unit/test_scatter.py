"""Scatter-gather ordering, fail-fast, collected errors and the in-flight bound."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from rpc.scatter import as_arguments, gather


class FakeCall:
    """A call in flight that a background thread completes after ``delay``."""

    def __init__(self, value, delay, log):
        self.deadline = time.time() + 30
        self._future = concurrent.futures.Future()
        self.cancelled = False
        log.append(self)
        timer = threading.Timer(delay, self._finish, [value])
        timer.daemon = True
        timer.start()

    def _finish(self, value):
        if self._future.done():
            return
        if isinstance(value, Exception):
            self._future.set_exception(value)
        else:
            self._future.set_result(value)

    def done(self):
        return self._future.done()

    def result(self, timeout=None):
        return self._future.result(timeout)

    def cancel(self):
        self.cancelled = True
        return self._future.cancel()

    def add_done_callback(self, callback):
        self._future.add_done_callback(callback)


def submitter(log, running=None):
    def submit(args, kwargs):
        x = args[0] if args else kwargs["x"]
        value = ValueError(f"bad {x}") if x < 0 else x * 10
        # Items finish in reverse: a later item's reply arrives first.
        return FakeCall(value, 0.02 * (5 - x % 5), log)

    return submit


def test_results_come_in_input_order_not_completion_order():
    log: list[FakeCall] = []
    results = list(gather(submitter(log), (((x,), {}) for x in range(12))))
    assert results == [x * 10 for x in range(12)]


def test_the_window_bounds_calls_in_flight():
    log: list[FakeCall] = []
    most = 0

    def submit(args, kwargs):
        nonlocal most
        call = submitter(log)(args, kwargs)
        most = max(most, sum(1 for c in log if not c.done()))
        return call

    assert list(gather(submit, (((x,), {}) for x in range(20)), max_in_flight=3)) == [
        x * 10 for x in range(20)
    ]
    assert most <= 3


def test_first_error_raises_and_cancels_what_is_in_flight():
    log: list[FakeCall] = []
    calls = (((x,), {}) for x in [1, 2, -3, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match="bad -3"):
        list(gather(submitter(log), calls, max_in_flight=4))
    assert len(log) < 8  # the rest were never sent
    assert any(call.cancelled for call in log)


def test_return_exceptions_yields_them_in_place():
    log: list[FakeCall] = []
    results = list(
        gather(submitter(log), (((x,), {}) for x in [1, -2, 3]), return_exceptions=True)
    )
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError)


def test_a_submit_failure_is_that_items_error():
    def submit(args, kwargs):
        raise TypeError("cannot encode")

    results = list(gather(submit, [((1,), {})], return_exceptions=True))
    assert isinstance(results[0], TypeError)
    with pytest.raises(TypeError):
        list(gather(submit, [((1,), {})]))


def test_nothing_is_sent_before_iteration_starts():
    log: list[FakeCall] = []
    results = gather(submitter(log), (((x,), {}) for x in range(3)))
    assert log == []
    assert next(results) == 0


def test_starmap_items():
    assert as_arguments([1, 2]) == ((1, 2), {})
    assert as_arguments((1,)) == ((1,), {})
    assert as_arguments({"x": 1}) == ((), {"x": 1})
    with pytest.raises(TypeError, match="argument lists or keyword dicts"):
        as_arguments("abc")


def test_max_in_flight_must_be_positive():
    with pytest.raises(ValueError):
        list(gather(submitter([]), [], max_in_flight=0))
