"""The counting side both pipelines share: refusals, inline deliveries, stats, flush results.

``_worker.Pipeline`` (a thread) and ``_aio_worker.AsyncPipeline`` (a task) keep the same
attributes under one lock: the ledger, the queue, the flush target, when the oldest queued
message arrived, whether shutdown began. What they decide from those alone, without waiting
or I/O, lives here once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Optional, TypeVar

from tracklane._stats import DropReason, FlushResult, Stats
from tracklane.config import Options
from tracklane.exceptions import ConfigurationError

from .batching import next_batch_wait
from .delivery import Drop, Outcome
from .ledger import Ledger
from .settling import count_outcome, flush_result, warn_if_incomplete

__all__ = ["PipelineCounters", "open_queue", "reset_in_forked_child"]

logger = logging.getLogger("tracklane")
Q = TypeVar("Q")


def open_queue(
    open_durable: Callable[[], Q], open_memory: Callable[[], Q], first: bool, queue_path: object
) -> Q:
    """The queue a pipeline starts with: durable if it opens, else the caller hears of it.

    At construction (``first``) a durable queue that cannot be opened is a
    ``ConfigurationError`` naming ``queue_path``; when a forked child reopens it, the child
    queues in memory instead (logged), since nobody is there to catch the error.
    """
    try:
        return open_durable()
    except Exception as exc:
        if first:
            raise ConfigurationError(f"queue_path: cannot open {queue_path!r}: {exc}") from exc
        logger.exception("tracklane: cannot reopen the durable queue; queueing in memory")
        return open_memory()


def reset_in_forked_child(reset: Callable[[], None]) -> None:
    """Call the bound method ``reset`` in a forked child, as long as its object lives."""
    if not hasattr(os, "register_at_fork"):
        return
    method = weakref.WeakMethod(reset)

    def _child() -> None:
        bound = method()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=_child)


class PipelineCounters:
    """Counting and the batch rule over the state both pipelines keep under ``_lock``."""

    _options: Options
    _lock: threading.Lock
    _ledger: Ledger
    _queue: Any
    _report: Callable[[Drop], None]
    _flush_target: int
    _queue_since: float
    _stopping: bool
    _deadline: Optional[float]

    def count_refused(self, reason: DropReason) -> None:
        """Count a message refused before queueing (too large): tracked and dropped at once."""
        with self._lock:
            self._ledger.refuse(reason)

    def count_stubbed(self, data: bytes) -> bool:
        """Count a message a stub client accepted and sent nowhere: tracked and delivered."""
        with self._lock:
            self._ledger.stubbed()
        return True

    def end_inline(self, outcome: Outcome) -> None:
        """Settle an inline delivery (``sync_mode``, deliver-now) begun with ``begin_inline``."""
        with self._lock:
            self._ledger.end_inline()
            count_outcome(self._ledger, outcome.delivered, outcome.requests, outcome.drops)
        for drop in outcome.drops:
            self._report(drop)

    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return self._ledger.snapshot(len(self._queue))

    def stopped(self) -> bool:
        """True once shutdown has begun."""
        return self._stopping

    def _flush_result(self, target: int, timeout: float) -> FlushResult:
        with self._lock:
            result = flush_result(self._ledger, target, len(self._queue))
        return warn_if_incomplete(result, timeout)

    def _batch_wait(self) -> Optional[float]:
        """(Lock held) :func:`next_batch_wait` for the queue as it is now."""
        now = time.monotonic()
        deadline = self._deadline
        options = self._options
        return next_batch_wait(
            len(self._queue),
            options.batch_size,
            self._ledger.resolved < self._flush_target,
            now - self._queue_since,
            options.flush_interval,
            self._stopping,
            deadline is not None and now >= deadline,
        )
