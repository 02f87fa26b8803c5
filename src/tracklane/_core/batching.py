"""When a batch is due, and request bodies cut by exact size from encoded messages."""

from __future__ import annotations

from typing import Deque, List

from tracklane.config import MAX_REQUEST_BYTES

__all__ = ["ENVELOPE_BYTES", "batch_body", "body_size", "seconds_until_due", "take_batch"]

_HEAD = b'{"batch":['
_TAIL_START = b'],"sentAt":"'
_TAIL_END = b'"}'
SENT_AT_WIDTH = len("2000-01-01T00:00:00.000+00:00")  # the fixed width of every sentAt
# The envelope around the messages.
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL_START) + SENT_AT_WIDTH + len(_TAIL_END)


def batch_body(messages: List[bytes], sent_at: str) -> bytes:
    """``{"batch": [...], "sentAt": sent_at}`` around encoded messages, without re-encoding."""
    return b"".join((_HEAD, b",".join(messages), _TAIL_START, sent_at.encode("ascii"), _TAIL_END))


def body_size(messages: List[bytes]) -> int:
    """The exact size of ``batch_body(messages, ...)``."""
    return ENVELOPE_BYTES + sum(map(len, messages)) + max(len(messages) - 1, 0)


def take_batch(
    queue: Deque[bytes], max_count: int, max_bytes: int = MAX_REQUEST_BYTES
) -> List[bytes]:
    """Pop from the left of ``queue`` the most messages whose body fits both limits.

    Always takes at least one message (each is at most 32 KB, far below the request limit).
    """
    popleft = queue.popleft
    count = min(max_count, len(queue))
    batch = [popleft() for _ in range(count)]
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
