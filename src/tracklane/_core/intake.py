"""The limits of the queue at the calling side, without I/O: closed, full, by policy.

Both pipelines (``_worker.Pipeline``, ``_aio_intake.Intake``) append on their hot path
themselves; a message that cannot simply be appended is decided here. The caller holds
its lock, wakes its worker and reports the drop.
"""

from __future__ import annotations

import logging
from typing import Any

from tracklane._stats import DropReason
from tracklane.config import OverflowPolicy
from tracklane.exceptions import QueueFullError, ShutdownError

from .delivery import Drop
from .ledger import Ledger
from .settling import count_drop

__all__ = ["FullQueueWarning", "queue_full", "refuse_closed"]

logger = logging.getLogger("tracklane")

FULL_WARNING_INTERVAL = 60.0  # seconds between two "queue full" warnings


def refuse_closed(ledger: Ledger, data: bytes) -> Drop:
    """A message (already tracked) for a client that is shut down."""
    error = ShutdownError("the client is shut down")
    return count_drop(ledger, DropReason.SHUTDOWN, error, [data])


def queue_full(
    ledger: Ledger, queue: Any, data: bytes, policy: OverflowPolicy, max_queue_size: int
) -> Drop:
    """A full queue: drop the newest message, or with ``drop_oldest`` the oldest one and
    queue ``data`` in its place.

    A durable queue whose oldest messages are already on disk (``popleft`` raises
    ``IndexError``) drops the newest instead. ``block`` has waited before coming here.
    """
    error = QueueFullError(f"queue full ({max_queue_size} messages)")
    if policy is OverflowPolicy.DROP_OLDEST:
        try:
            oldest = queue.popleft()
        except IndexError:
            return count_drop(ledger, DropReason.QUEUE_FULL, error, [data])
        ledger.resolved += 1
        queue.append(data)
        ledger.accepted += 1
        return count_drop(ledger, DropReason.QUEUE_FULL, error, [oldest])
    return count_drop(ledger, DropReason.QUEUE_FULL, error, [data])


class FullQueueWarning:
    """One log line per ``FULL_WARNING_INTERVAL`` while the queue overflows."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = -FULL_WARNING_INTERVAL

    def warn(self, now: float, max_queue_size: int, policy: OverflowPolicy) -> None:
        """Log the warning if the last one is at least the interval old (``now``: monotonic)."""
        if now - self._last >= FULL_WARNING_INTERVAL:
            self._last = now
            logger.warning(
                "tracklane: queue full (%d messages), dropping by policy %s; "
                "see client.stats() for counts",
                max_queue_size,
                policy.value,
            )
