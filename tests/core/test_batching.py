"""Batch cutting and request bodies: pure, exact sizes."""

from __future__ import annotations

import json
from collections import deque

import pytest

from tracklane._buffer import MemoryBuffer
from tracklane._core.batching import (
    ENVELOPE_BYTES,
    batch_body,
    body_size,
    seconds_until_due,
    seconds_until_full,
    take_batch,
)

SENT_AT = "2026-01-02T03:04:05.678+00:00"


def msg(n: int, size: int = 20) -> bytes:
    text = json.dumps({"n": n, "pad": "x" * size})
    return text.encode()


def test_body_is_the_envelope_around_the_messages():
    """The body is valid JSON holding the messages unchanged and the given sentAt."""
    body = batch_body([msg(1), msg(2)], SENT_AT)
    parsed = json.loads(body)
    assert parsed == {"batch": [json.loads(msg(1)), json.loads(msg(2))], "sentAt": SENT_AT}


@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_body_size_is_exact(count):
    """body_size predicts the body's length to the byte, the envelope included."""
    messages = [msg(i, size=i * 3) for i in range(count)]
    assert body_size(messages) == len(batch_body(messages, SENT_AT))
    assert len(batch_body([], SENT_AT)) == ENVELOPE_BYTES


def test_take_batch_takes_up_to_the_count_in_order():
    """A batch is the oldest messages, at most max_count of them; the rest stay queued."""
    queue = deque(msg(i) for i in range(5))
    assert take_batch(queue, 3) == [msg(0), msg(1), msg(2)]
    assert list(queue) == [msg(3), msg(4)]
    assert take_batch(queue, 3) == [msg(3), msg(4)]
    assert not queue


@pytest.mark.parametrize("queued", [1, 3, 4, 5, 9, 40])
def test_take_batch_keeps_order_whatever_the_backlog(queued):
    """Taking 4 from any backlog (all of it, most of it, a small part) keeps FIFO order."""
    for queue in (
        deque(msg(i) for i in range(queued)),
        MemoryBuffer(msg(i) for i in range(queued)),
    ):
        batch = take_batch(queue, 4)
        taken = min(4, queued)
        assert batch == [msg(i) for i in range(taken)]
        assert list(queue) == [msg(i) for i in range(taken, queued)]
        queue.append(msg(queued))
        assert list(queue)[-1] == msg(queued)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 100])
def test_body_does_not_change_the_messages(count):
    """Building a body (retries and splits rebuild from the same list) leaves the list as it was."""
    messages = [msg(i) for i in range(count)]
    before = list(messages)
    body = batch_body(messages, SENT_AT)
    assert messages == before
    assert json.loads(body) == {"batch": [json.loads(m) for m in before], "sentAt": SENT_AT}


def test_take_batch_cuts_at_the_byte_limit_exactly():
    """The longest prefix whose body fits max_bytes is taken; the first message over it stays."""
    queue = deque(msg(i, size=100) for i in range(10))
    each = len(msg(0, size=100))
    limit = ENVELOPE_BYTES + 4 * each + 3  # exactly four messages and three commas
    batch = take_batch(queue, 10, limit)
    assert len(batch) == 4
    assert len(batch_body(batch, SENT_AT)) == limit
    assert next(iter(queue)) == msg(4, size=100)
    assert len(queue) == 6
    batch = take_batch(queue, 10, limit - 1)
    assert len(batch) == 3
    assert next(iter(queue)) == msg(7, size=100)


def test_take_batch_always_takes_one_message():
    """A single message over the byte limit still goes alone (its size was checked at the call)."""
    queue = deque([msg(0, size=500), msg(1)])
    assert take_batch(queue, 10, 100) == [msg(0, size=500)]
    assert list(queue) == [msg(1)]


@pytest.mark.parametrize(
    ("queued", "flushing", "age", "expected"),
    [
        (100, False, 0.0, 0.0),  # a full batch is due at once
        (250, False, 0.0, 0.0),
        (1, True, 0.0, 0.0),  # a flush wants it now
        (1, False, 0.2, 0.3),  # wait out the rest of the interval
        (1, False, 0.5, 0.0),  # the oldest message is flush_interval old
        (1, False, 9.0, 0.0),
    ],
)
def test_seconds_until_due(queued, flushing, age, expected):
    """A batch is due when full, on flush, or when the oldest message is flush_interval old."""
    assert seconds_until_due(queued, 100, flushing, age, 0.5) == pytest.approx(expected)


def test_zero_flush_interval_is_always_due():
    """flush_interval=0 sends whatever waits as soon as the previous request is done."""
    assert seconds_until_due(1, 100, False, 0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("queued", "age", "expected"),
    [
        (10, 0.1, 0.9),  # 10 in 0.1 s: 90 more take 0.9 s
        (50, 0.5, 0.5),
        (99, 0.99, 0.01),
        (1, 0.0, 0.0),  # no pace known yet
    ],
)
def test_seconds_until_full_extrapolates_the_pace(queued, age, expected):
    """The worker expects the batch full when the rest arrives at the pace seen so far."""
    assert seconds_until_full(queued, 100, age) == pytest.approx(expected)
