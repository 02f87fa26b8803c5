"""What a batch's end, a shutdown and a flush do to the counters, without I/O.

The thread worker (``_worker.Pipeline``) and the asyncio task (``_aio_worker``) settle
batches, write off what shutdown cut short and answer a flush by these same rules; each
caller holds its lock around them and does its own waking and reporting.
"""

from __future__ import annotations

import logging
from typing import Iterable, List, Optional, Tuple

from tracklane._stats import DropReason, FlushResult
from tracklane.exceptions import DeliveryError, ShutdownError

from .delivery import Drop
from .ledger import Ledger

__all__ = [
    "count_drop",
    "count_outcome",
    "drop_unsent",
    "flush_result",
    "kept_for_next_process",
    "redeem_written_off",
    "warn_if_incomplete",
    "write_off",
]

logger = logging.getLogger("tracklane")


def count_drop(
    ledger: Ledger, reason: DropReason, error: DeliveryError, messages: List[bytes]
) -> Drop:
    """Count ``messages`` (already tracked) as dropped for ``reason``; the drop to report."""
    ledger.drop(reason, len(messages))
    return Drop(reason, error, messages)


def count_outcome(ledger: Ledger, delivered: int, requests: int, drops: Iterable[Drop]) -> None:
    """Count a batch's (or an inline delivery's) end: delivered, acknowledged requests, drops."""
    ledger.delivered += delivered
    ledger.batches += requests
    for drop in drops:
        ledger.drop(drop.reason, len(drop.messages))


def redeem_written_off(ledger: Ledger, delivered: int, requests: int) -> None:
    """A batch written off at shutdown (:func:`write_off`) was delivered after all."""
    ledger.undrop(DropReason.SHUTDOWN, delivered)
    ledger.delivered += delivered
    ledger.batches += requests


def kept_for_next_process(drops: List[Drop], durable: bool) -> Tuple[List[bytes], List[Drop]]:
    """A durable queue keeps what shutdown cut short, for the next process: not dropped.

    Returns the messages to keep and the drops that remain.
    """
    if not durable:
        return [], drops
    keep = [m for d in drops if d.reason is DropReason.SHUTDOWN for m in d.messages]
    return keep, [d for d in drops if d.reason is not DropReason.SHUTDOWN]


def write_off(ledger: Ledger, batch: List[bytes]) -> Drop:
    """Shutdown's deadline passed with ``batch`` still in flight: count it as dropped now.

    Should its request still succeed later, :func:`redeem_written_off` moves it over to
    delivered.
    """
    ledger.resolved += len(batch)
    ledger.inflight = 0
    error = ShutdownError("the deadline passed while this batch was still being sent")
    return count_drop(ledger, DropReason.SHUTDOWN, error, batch)


def drop_unsent(
    ledger: Ledger, messages: List[bytes], still_queued: int, queue_path: object
) -> Optional[Drop]:
    """Shutdown gives up on the queued ``messages``; None when a durable queue keeps them.

    ``messages`` is what the queue gave up (empty for a durable queue, whose rows stay on
    disk for the next process; ``still_queued`` of them).
    """
    if not messages:
        logger.info(
            "tracklane: %d messages stay in %s for the next process", still_queued, queue_path
        )
        return None
    ledger.resolved += len(messages)
    error = ShutdownError("the client shut down before these messages could be sent")
    return count_drop(ledger, DropReason.SHUTDOWN, error, messages)


def flush_result(ledger: Ledger, target: int, queued: int) -> FlushResult:
    """Whether everything accepted up to ``target`` is resolved, and what is still pending."""
    complete = ledger.resolved >= target
    pending = 0 if complete else target - ledger.resolved
    return FlushResult(complete=complete, pending=pending, stats=ledger.snapshot(queued))


def warn_if_incomplete(result: FlushResult, timeout: float) -> FlushResult:
    """Log a flush that timed out; returns ``result``."""
    if not result.complete:
        logger.warning(
            "tracklane: flush timed out after %.1fs with %d messages still pending",
            timeout,
            result.pending,
        )
    return result
