"""The gateway's per-caller limits: a token bucket, and requests in progress."""

from __future__ import annotations

import pytest

from rpc.gateway_limits import CallerLimits, RateLimit, TokenBucket, retry_after


def test_a_bucket_allows_its_burst_then_one_request_per_refill():
    bucket = TokenBucket(RateLimit(rate=2.0, burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # the next token in half a second
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) > 0


def test_a_bucket_never_holds_more_than_its_burst():
    bucket = TokenBucket(RateLimit(rate=10.0, burst=2), now=0.0)
    assert [bucket.take(100.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(100.0) > 0


def test_retry_after_is_whole_seconds_and_at_least_one():
    assert retry_after(0.01) == "1"
    assert retry_after(1.0) == "1"
    assert retry_after(1.2) == "2"


def test_rate_limits_must_make_sense():
    with pytest.raises(ValueError):
        RateLimit(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimit(rate=1, burst=0)


def test_callers_have_buckets_and_counts_of_their_own():
    limits = CallerLimits()
    rate = RateLimit(rate=1.0, burst=1)
    assert limits.admit("a", rate=rate, max_concurrent=None, now=0.0) is None
    refused = limits.admit("a", rate=rate, max_concurrent=None, now=0.0)
    assert refused is not None and refused[0] == "rate"
    assert limits.admit("b", rate=rate, max_concurrent=None, now=0.0) is None


def test_requests_in_progress_are_capped_and_released():
    limits = CallerLimits()
    assert limits.admit("a", rate=None, max_concurrent=2, now=0.0) is None
    assert limits.admit("a", rate=None, max_concurrent=2, now=0.0) is None
    assert limits.admit("a", rate=None, max_concurrent=2, now=0.0) == (
        "concurrency",
        1.0,
    )
    limits.release("a")
    assert limits.in_progress("a") == 1
    assert limits.admit("a", rate=None, max_concurrent=2, now=0.0) is None
