"""Request bodies assembled from already-encoded messages, cut by exact size."""

from __future__ import annotations

from typing import Deque, List

from .config import MAX_REQUEST_BYTES
from .messages import now_timestamp

__all__ = ["ENVELOPE_BYTES", "batch_body", "take_batch"]

_HEAD = b'{"batch":['
_TAIL_START = b'],"sentAt":"'
_TAIL_END = b'"}'
# The envelope around the messages, with a sentAt of fixed width ("...T..:..:...mmm+00:00").
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL_START) + len(now_timestamp()) + len(_TAIL_END)


def batch_body(messages: List[bytes]) -> bytes:
    """``{"batch": [...], "sentAt": now}`` around encoded messages, without re-encoding them."""
    sent_at = now_timestamp().encode("ascii")
    return b"".join((_HEAD, b",".join(messages), _TAIL_START, sent_at, _TAIL_END))


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


def body_size(messages: List[bytes]) -> int:
    """The exact size of ``batch_body(messages)``."""
    return ENVELOPE_BYTES + sum(map(len, messages)) + max(len(messages) - 1, 0)
