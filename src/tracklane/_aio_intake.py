"""The calling side of ``AsyncPipeline``: queueing from any thread, counting refusals.

Split from ``_aio_worker`` to keep modules small; the attributes are the pipeline's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, List, Optional

from ._core.delivery import Drop, Outcome
from ._core.ledger import Ledger
from ._stats import DropReason, Stats
from .config import Options, OverflowPolicy
from .exceptions import DeliveryError, QueueFullError, ShutdownError

__all__ = ["Intake"]

logger = logging.getLogger("tracklane")
_FULL_WARNING_INTERVAL = 60.0


class Intake:
    """Queueing a message without blocking, and the counts of what is refused."""

    _options: Options
    _report: Callable[[Drop], None]
    _batch_size: int
    _max_queue_size: int
    _lock: threading.Lock
    _queue: Any
    _ledger: Ledger
    _closed: bool
    _stopping: bool
    _queue_since: float
    _last_full_warning: float
    _pid: int

    def _after_fork(self) -> None:  # pragma: no cover - defined by the pipeline
        raise NotImplementedError

    def _poke(self) -> None:  # pragma: no cover - defined by the pipeline
        raise NotImplementedError

    def put(self, data: bytes) -> bool:
        """Queue one encoded message without blocking; False (counted, reported) if refused."""
        if self._pid != os.getpid():
            self._after_fork()
        dropped: Optional[Drop] = None
        with self._lock:
            ledger = self._ledger
            ledger.tracked += 1
            queue = self._queue
            size = len(queue)
            if size < self._max_queue_size and not self._closed:
                queue.append(data)
                ledger.accepted += 1
                if size == 0:
                    self._queue_since = time.monotonic()
                elif size + 1 != self._batch_size:
                    return True
            elif self._closed:
                dropped = self._count_drop(
                    DropReason.SHUTDOWN, ShutdownError("the client is shut down"), [data]
                )
            else:
                dropped = self._overflow(data)
        if dropped is None:
            self._poke()  # the first message of a batch, or a full batch
            return True
        self._report(dropped)
        return dropped.messages[0] is not data

    def _overflow(self, data: bytes) -> Drop:
        """A full queue (lock held): drop the newest, or the oldest (``drop_oldest``)."""
        now = time.monotonic()
        if now - self._last_full_warning >= _FULL_WARNING_INTERVAL:
            self._last_full_warning = now
            logger.warning(
                "tracklane: queue full (%d messages), dropping by policy %s; "
                "see client.stats() for counts",
                self._max_queue_size,
                self._options.overflow.value,
            )
        error = QueueFullError(f"queue full ({self._max_queue_size} messages)")
        if self._options.overflow is OverflowPolicy.DROP_OLDEST:
            try:
                oldest = self._queue.popleft()
            except IndexError:  # durable: the oldest are on disk already; drop the newest
                return self._count_drop(DropReason.QUEUE_FULL, error, [data])
            self._ledger.resolved += 1
            self._queue.append(data)
            self._ledger.accepted += 1
            return self._count_drop(DropReason.QUEUE_FULL, error, [oldest])
        return self._count_drop(DropReason.QUEUE_FULL, error, [data])

    def _count_drop(self, reason: DropReason, error: DeliveryError, messages: List[bytes]) -> Drop:
        self._ledger.drop(reason, len(messages))
        return Drop(reason, error, messages)

    def refuse(self, reason: DropReason) -> None:
        """Count a message refused before queueing (too large)."""
        with self._lock:
            self._ledger.refuse(reason)

    def stubbed(self, data: bytes) -> bool:
        """A stub client's message: tracked and delivered nowhere."""
        with self._lock:
            self._ledger.stubbed()
        return True

    def begin_inline(self) -> bool:
        """An inline delivery starts (tracked, pending); False if the client is shut down."""
        with self._lock:
            if self._closed:
                return False
            self._ledger.begin_inline()
            return True

    def end_inline(self, outcome: Outcome) -> None:
        """Settle an inline delivery begun with :meth:`begin_inline`."""
        with self._lock:
            self._ledger.end_inline()
            self._ledger.delivered += outcome.delivered
            self._ledger.batches += outcome.requests
            for drop in outcome.drops:
                self._ledger.drop(drop.reason, len(drop.messages))
        for drop in outcome.drops:
            self._report(drop)

    def refuse_closed(self, data: bytes) -> None:
        """A message for a client already shut down: tracked, dropped, reported."""
        with self._lock:
            self._ledger.tracked += 1
            drop = self._count_drop(
                DropReason.SHUTDOWN, ShutdownError("the client is shut down"), [data]
            )
        self._report(drop)

    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return self._ledger.snapshot(len(self._queue))

    def stopped(self) -> bool:
        """True once shutdown has begun."""
        return self._stopping
