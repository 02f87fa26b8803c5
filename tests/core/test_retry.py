"""The retry plan: pure decisions with an injected clock and random source."""

from __future__ import annotations

import datetime as dt

import pytest

from tracklane._core.retry import (
    Decision,
    RetryPolicy,
    is_retryable_status,
    is_split_status,
    parse_retry_after,
)
from tracklane._stats import DropReason

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)
POLICY = RetryPolicy(max_retries=3, base=1.0, cap=4.0, max_total=20.0, max_retry_after=30.0)


def plan(status, retry_after=None, *, retry=1, size=10, spent=0.0, now=100.0, deadline=None):
    return POLICY.plan(
        status,
        retry_after,
        retry=retry,
        size=size,
        spent=spent,
        now=now,
        deadline=deadline,
        deadline_reason=DropReason.SHUTDOWN,
        rand=lambda: 0.5,
    )


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status):
    """408, 429 and 5xx are retried."""
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 501, 505, 302])
def test_final_statuses(status):
    """Other 4xx, 501, 505 and redirects are final."""
    assert not is_retryable_status(status)


def test_split_statuses():
    """Only 400 and 413 split a batch."""
    assert is_split_status(400)
    assert is_split_status(413)
    assert not is_split_status(422)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("nan", None),
        ("soon", None),
        ("Wed, 04 Mar 2026 05:06:17 GMT", 10.0),
        ("Wed, 04 Mar 2026 05:06:00 GMT", 0.0),  # in the past: no wait
        ("04 Mar 2026 05:06:37 -0000", 30.0),  # no zone given: UTC
    ],
)
def test_parse_retry_after(header, seconds):
    """Retry-After in seconds or as an HTTP date, measured from the given now; junk is None."""
    assert parse_retry_after(header, NOW) == seconds


def test_backoff_is_full_jitter_capped():
    """Backoff is uniform in [0, min(cap, base*2^(n-1))]: rand scales the ceiling."""
    assert POLICY.backoff(1, lambda: 1.0) == 1.0
    assert POLICY.backoff(2, lambda: 1.0) == 2.0
    assert POLICY.backoff(3, lambda: 0.5) == 2.0
    assert POLICY.backoff(10, lambda: 1.0) == 4.0  # capped
    assert POLICY.backoff(10_000, lambda: 1.0) == 4.0  # no overflow
    assert POLICY.backoff(5, lambda: 0.0) == 0.0


def test_retry_after_replaces_backoff_and_is_capped():
    """The server's Retry-After is the wait, up to max_retry_after."""
    assert POLICY.delay(1, 12.0, lambda: 0.0) == 12.0
    assert POLICY.delay(1, 120.0) == 30.0
    assert POLICY.delay(2, None, lambda: 1.0) == 2.0


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_delivered(status):
    """A 2xx answer delivers the batch."""
    assert plan(status).decision is Decision.DELIVERED


def test_final_status_drops_as_rejected():
    """A 401 is final: dropped as rejected without a wait."""
    result = plan(401)
    assert (result.decision, result.reason) == (Decision.DROP, DropReason.REJECTED)


@pytest.mark.parametrize("status", [400, 413])
def test_400_and_413_split_a_batch_of_several(status):
    """A 400/413 on several messages splits; on one message it rejects that message."""
    assert plan(status, size=2).decision is Decision.SPLIT
    single = plan(status, size=1)
    assert (single.decision, single.reason) == (Decision.DROP, DropReason.REJECTED)


def test_no_answer_and_5xx_are_retried_after_backoff():
    """A connection failure (no status) or a 503 is retried after the jittered backoff."""
    for status in (None, 503):
        result = plan(status, retry=2)
        assert (result.decision, result.wait) == (Decision.RETRY, 1.0)


def test_retry_after_sets_the_wait():
    """A 429 with Retry-After waits exactly that long."""
    result = plan(429, 6.0)
    assert (result.decision, result.wait) == (Decision.RETRY, 6.0)


def test_too_many_retries_exhausts():
    """Past max_retries the batch is dropped as retries exhausted."""
    assert plan(503, retry=3).decision is Decision.RETRY
    result = plan(503, retry=4)
    assert (result.decision, result.reason) == (Decision.DROP, DropReason.RETRIES_EXHAUSTED)
    assert not result.by_deadline


def test_total_budget_exhausts():
    """A wait that would take the batch past max_total seconds drops it instead."""
    assert plan(429, 5.0, spent=15.0).decision is Decision.RETRY
    result = plan(429, 5.5, spent=15.0)
    assert (result.decision, result.reason) == (Decision.DROP, DropReason.RETRIES_EXHAUSTED)


def test_deadline_drops_with_the_callers_reason():
    """A wait that ends at or after the caller's deadline drops for the deadline's reason."""
    # The first retry's backoff is 0.5 s here (base 1.0, rand 0.5).
    assert plan(503, now=100.0, deadline=100.5).decision is Decision.DROP
    result = plan(503, now=100.0, deadline=100.4)
    assert (result.reason, result.by_deadline) == (DropReason.SHUTDOWN, True)
    assert plan(503, now=100.0, deadline=100.6).decision is Decision.RETRY
