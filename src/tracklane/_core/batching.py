"""When a batch is due, and request bodies cut by exact size from encoded messages."""

from __future__ import annotations

from itertools import islice, repeat
from typing import Deque, List, Optional

from tracklane.config import MAX_REQUEST_BYTES

__all__ = [
    "ENVELOPE_BYTES",
    "batch_body",
    "body_size",
    "next_batch_wait",
    "seconds_until_due",
    "seconds_until_full",
    "take_batch",
]

_HEAD = b'{"batch":['
_TAIL_START = b'],"sentAt":"'
_TAIL_END = b'"}'
SENT_AT_WIDTH = len("2000-01-01T00:00:00.000+00:00")  # the fixed width of every sentAt
# The envelope around the messages.
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL_START) + SENT_AT_WIDTH + len(_TAIL_END)


def batch_body(messages: List[bytes], sent_at: str) -> bytes:
    """``{"batch": [...], "sentAt": sent_at}`` around encoded messages, without re-encoding.

    One copy of the body: the envelope is glued to the first and last message (small) and
    everything is joined once, instead of joining the messages and then the envelope around
    them. The worker holds the GIL for every copy (docs/performance.md, the tail).
    """
    tail = b"".join((_TAIL_START, sent_at.encode("ascii"), _TAIL_END))
    if len(messages) <= 1:
        return b"".join((_HEAD, *messages, tail))
    parts = messages[:]
    parts[0] = _HEAD + parts[0]
    parts[-1] += tail
    return b",".join(parts)


def body_size(messages: List[bytes]) -> int:
    """The exact size of ``batch_body(messages, ...)``."""
    return ENVELOPE_BYTES + sum(map(len, messages)) + max(len(messages) - 1, 0)


def take_batch(
    queue: Deque[bytes], max_count: int, max_bytes: int = MAX_REQUEST_BYTES
) -> List[bytes]:
    """Pop from the left of ``queue`` the most messages whose body fits both limits.

    Always takes at least one message (each is at most 32 KB, far below the request limit).
    The removal runs in C (copying and clearing the deque, or copying what stays when that
    is less than what goes), not one ``popleft`` call per message: the worker holds the GIL
    while it takes a batch.
    """
    queued = len(queue)
    count = min(max_count, queued)
    if count == queued:
        batch = list(queue)
        queue.clear()
    else:
        batch = list(islice(queue, count))
        if queued - count < count:
            rest = list(islice(queue, count, None))
            queue.clear()
            queue.extend(rest)
        else:
            popleft = queue.popleft
            for _ in repeat(None, count):
                popleft()
    size = body_size(batch)
    if size <= max_bytes:
        return batch  # the common case: one pass, no per-message bookkeeping
    # Too big: keep the longest prefix that fits, put the rest back in order.
    size = ENVELOPE_BYTES + len(batch[0])
    keep = 1
    while keep < count and size + 1 + len(batch[keep]) <= max_bytes:
        size += 1 + len(batch[keep])
        keep += 1
    queue.extendleft(reversed(batch[keep:]))
    return batch[:keep]


def seconds_until_due(
    queued: int, batch_size: int, flushing: bool, age: float, flush_interval: float
) -> float:
    """How long until the next batch should be cut: 0.0 means now.

    A batch is due when ``batch_size`` messages wait, when a flush asks for what is
    queued, or when the oldest waiting message is ``flush_interval`` old (``age`` seconds).
    Call it only with ``queued > 0``.
    """
    if queued >= batch_size or flushing:
        return 0.0
    return max(flush_interval - age, 0.0)


def next_batch_wait(
    queued: int,
    batch_size: int,
    flushing: bool,
    age: float,
    flush_interval: float,
    stopping: bool,
    past_deadline: bool,
) -> Optional[float]:
    """The worker's rule for its next batch: 0.0 now, a wait in seconds, or None.

    None means nothing is to be sent: stopping with the queue empty or past the deadline
    (the worker ends), or an empty queue (it waits for work). While stopping, whatever is
    queued goes out at once, batch after batch.
    """
    if stopping:
        return None if not queued or past_deadline else 0.0
    if not queued:
        return None
    return seconds_until_due(queued, batch_size, flushing, age, flush_interval)


def seconds_until_full(queued: int, batch_size: int, age: float) -> float:
    """When ``batch_size`` messages should wait, at the pace the ``queued`` ones came.

    ``age`` is how long the oldest of them has waited. Call it only with
    ``0 < queued < batch_size``; the answer is an estimate, 0.0 when the pace is unknown.
    """
    if age <= 0.0:
        return 0.0
    return (batch_size - queued) * age / queued
