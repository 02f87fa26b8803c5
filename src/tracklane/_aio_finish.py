"""``flush``, ``shutdown`` and the shutdown without a loop, for ``AsyncPipeline``.

Split from ``_aio_worker`` to keep modules small; the attributes are the pipeline's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Callable, List, Optional

from ._aio_queue import DiskQueue
from ._core.batching import take_batch
from ._core.counters import PipelineCounters
from ._core.delivery import Drop
from ._core.ledger import Ledger
from ._core.settling import count_outcome, drop_unsent, write_off
from ._delivery import Sender
from ._stats import FlushResult
from .config import Options
from .transports import AsyncTransport

__all__ = ["FlushAndShutdown"]

logger = logging.getLogger("tracklane")


class FlushAndShutdown(PipelineCounters):
    """Ending work: waiting for what is queued, and stopping the task within a deadline."""

    _options: Options
    _transport: AsyncTransport
    _report: Callable[[Drop], None]
    _batch_size: int
    _lock: threading.Lock
    _queue: Any
    _ledger: Ledger
    _loop: Optional[asyncio.AbstractEventLoop]
    _task: Optional[asyncio.Task[None]]
    _sleeper: Optional[asyncio.Future[bool]]
    _flushers: List[asyncio.Future[None]]
    _aborted: bool
    _cancel_reason: Optional[str]
    _flush_target: int
    _closed: bool
    _stopping: bool
    _deadline: Optional[float]
    _inflight_batch: List[bytes]
    _written_off: bool
    _pid: int

    def _after_fork(self) -> None:  # pragma: no cover - defined by the pipeline
        raise NotImplementedError

    def _wake(self) -> None:  # pragma: no cover - defined by the pipeline
        raise NotImplementedError

    def _bind(self, loop: asyncio.AbstractEventLoop, force: bool = False) -> bool:
        raise NotImplementedError  # pragma: no cover - defined by the pipeline

    async def flush(self, timeout: float) -> FlushResult:
        """Send everything queued now, waiting at most ``timeout`` seconds."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._task is not None and asyncio.current_task() is self._task:
            # Called from on_error inside the task: waiting on ourselves would only time out.
            return self._flush_result(0, timeout)
        result: FlushResult = await self._on_bound_loop(lambda: self._flush_here(timeout), timeout)
        return result

    async def _flush_here(self, timeout: float) -> FlushResult:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._ledger.accepted
            if target > self._flush_target:
                self._flush_target = target
        self._wake()
        while self._ledger.resolved < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiter = loop.create_future()
            self._flushers.append(waiter)
            await asyncio.wait({waiter}, timeout=remaining)
        return self._flush_result(target, timeout)

    async def shutdown(self, timeout: float) -> FlushResult:
        """Deliver what is queued within ``timeout``, drop the rest, stop the task. Idempotent."""
        if self._pid != os.getpid():
            self._after_fork()
        result: FlushResult = await self._on_bound_loop(
            lambda: self._shutdown_here(timeout), timeout
        )
        return result

    async def _shutdown_here(self, timeout: float) -> FlushResult:
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._ledger.accepted
            first = not self._stopping
            if first:
                self._closed = True
                self._stopping = True
                self._deadline = deadline
                self._flush_target = target
        self._wake()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                self._abort()
                done, _ = await asyncio.wait({task}, timeout=0.5)
            if not done:
                self._cancel_reason = "shutdown"
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
                self._write_off_inflight()
        with self._lock:
            leftover = self._drop_queued_locked()
        if leftover is not None:
            self._report(leftover)
        if first:
            await self._queue.close()
            close = getattr(self._transport, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # pragma: no cover - a custom transport's problem
                    logger.exception("tracklane: closing the transport failed")
        self._notify_flushers()
        return self._flush_result(target, timeout)

    def shutdown_blocking(self, timeout: float, sender: Sender) -> FlushResult:
        """Shut down without a loop (the loop is gone, at interpreter exit).

        What is queued is delivered in this thread through ``sender`` (the blocking
        driver of the same core) within ``timeout``; the rest is dropped and reported. A
        durable queue writes what is staged and keeps everything for the next process.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._ledger.accepted
            self._closed = True
            self._stopping = True
            self._deadline = deadline
            if self._ledger.inflight and not self._written_off:
                self._queue.requeue(self._inflight_batch)
                self._ledger.inflight = 0
                self._inflight_batch = []
        queue = self._queue
        if isinstance(queue, DiskQueue):
            queue.close_now(self._lock)
            return self._flush_result(target, timeout)
        never = threading.Event()
        while time.monotonic() < deadline:
            with self._lock:
                if not len(queue):
                    break
                batch = take_batch(queue._items, self._batch_size)
                self._ledger.inflight = len(batch)
            outcome = sender.deliver(batch, never, deadline)
            with self._lock:
                self._ledger.inflight = 0
                count_outcome(self._ledger, outcome.delivered, outcome.requests, outcome.drops)
                self._ledger.resolved += len(batch)
            for drop in outcome.drops:
                self._report(drop)
        with self._lock:
            leftover = self._drop_queued_locked()
        if leftover is not None:
            self._report(leftover)
        return self._flush_result(target, timeout)

    def _abort(self) -> None:
        """Shutdown's deadline passed: cut the retry wait and the request short."""
        self._aborted = True
        sleeper = self._sleeper
        if sleeper is not None and not sleeper.done():
            sleeper.set_result(True)
        abort = getattr(self._transport, "abort", None)
        if abort is not None:
            abort()

    def _write_off_inflight(self) -> None:
        """The task could not finish its batch by the deadline: count it as dropped now."""
        with self._lock:
            if not self._ledger.inflight or self._written_off or self._queue.durable:
                return
            self._written_off = True
            drop = write_off(self._ledger, self._inflight_batch)
        self._report(drop)

    def _drop_queued_locked(self) -> Optional[Drop]:
        if not len(self._queue):
            return None
        messages = self._queue.drain()  # durable: empty, the rows stay for the next process
        return drop_unsent(self._ledger, messages, len(self._queue), self._options.queue_path)

    def _notify_flushers(self) -> None:
        flushers, self._flushers = self._flushers, []
        for waiter in flushers:
            if not waiter.done():
                waiter.set_result(None)

    async def _on_bound_loop(self, coro_fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``coro_fn()`` on the loop the task lives on (which may be another thread's)."""
        loop = asyncio.get_running_loop()
        bound = self._loop
        if (
            bound is None
            or bound is loop
            or bound.is_closed()
            or not bound.is_running()
            or self._task is None
            or self._task.done()
        ):
            self._bind(loop, force=bound is not loop)
            return await coro_fn()
        future = asyncio.run_coroutine_threadsafe(coro_fn(), bound)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout + 1.0)
