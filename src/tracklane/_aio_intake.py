"""The calling side of ``AsyncPipeline``: queueing from any thread, counting refusals.

Split from ``_aio_worker`` to keep modules small; the attributes are the pipeline's.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

from ._core.counters import PipelineCounters
from ._core.delivery import Drop
from ._core.intake import FullQueueWarning, queue_full, refuse_closed
from ._core.ledger import Ledger
from .config import Options

__all__ = ["Intake"]


class Intake(PipelineCounters):
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
    _full_warning: FullQueueWarning
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
                dropped = refuse_closed(ledger, data)
            else:
                policy = self._options.overflow
                self._full_warning.warn(time.monotonic(), self._max_queue_size, policy)
                dropped = queue_full(ledger, queue, data, policy, self._max_queue_size)
        if dropped is None:
            self._poke()  # the first message of a batch, or a full batch
            return True
        self._report(dropped)
        return dropped.messages[0] is not data

    def begin_inline(self) -> bool:
        """An inline delivery starts (tracked, pending); False if the client is shut down."""
        with self._lock:
            if self._closed:
                return False
            self._ledger.begin_inline()
            return True

    def refuse_closed(self, data: bytes) -> None:
        """A message for a client already shut down: tracked, dropped, reported."""
        with self._lock:
            self._ledger.tracked += 1
            drop = refuse_closed(self._ledger, data)
        self._report(drop)
