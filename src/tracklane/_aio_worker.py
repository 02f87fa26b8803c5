"""The asyncio twin of ``_worker.Pipeline``: one delivery task on the event loop.

The same rules as the thread worker, decided by the same core (``next_batch_wait``,
``BatchJob``, ``Ledger``, ``intake``, ``settling``, ``PipelineCounters``): a batch when
``batch_size`` messages wait, when the oldest is ``flush_interval`` old, or on flush; one
request in flight; every wait has a deadline.

The pipeline binds to the loop of its first use (the first call made on a running loop,
or ``flush``/``shutdown``); calls from other threads append under a lock and wake the
task with ``call_soon_threadsafe``. If that loop closes (``asyncio.run`` returning,
a test's loop ending), the task is gone: the batch it had in flight goes back to the
front of the queue, and the next use on another loop binds again. What is still queued
at interpreter exit is delivered by the exit hook on a fresh loop within
``shutdown_timeout``, or counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from ._aio_finish import FlushAndShutdown
from ._aio_intake import Intake
from ._aio_queue import DiskQueue, MemoryQueue
from ._core.batching import seconds_until_due, take_batch
from ._core.counters import open_queue, reset_in_forked_child
from ._core.delivery import Action, BatchJob, Done, Drop, Outcome, Send
from ._core.intake import FullQueueWarning
from ._core.ledger import Ledger
from ._core.retry import RetryPolicy
from ._core.settling import count_outcome, kept_for_next_process, redeem_written_off
from ._stats import DropReason
from .config import Options
from .exceptions import DeliveryError
from .messages import now_timestamp
from .transports import AsyncTransport, SendResult

__all__ = ["AsyncPipeline"]

logger = logging.getLogger("tracklane")
Queue = Any  # MemoryQueue or DiskQueue


class AsyncPipeline(Intake, FlushAndShutdown):
    """A bounded FIFO of encoded messages and the task that sends them in batches."""

    def __init__(
        self,
        options: Options,
        transport: AsyncTransport,
        policy: RetryPolicy,
        report: Callable[[Drop], None],
    ) -> None:
        self._options = options
        self._transport = transport
        self._policy = policy
        self._report = report
        self.on_loop_end: List[Callable[[], None]] = []
        abort = getattr(transport, "abort", None)
        if abort is not None:
            self.on_loop_end.append(abort)
        self._chain: Optional[Callable[..., Awaitable[SendResult]]] = getattr(
            transport, "send_chain", None
        )
        self._batch_size = options.batch_size
        self._max_queue_size = options.max_queue_size
        self._queue: Queue = None
        self._reset()
        reset_in_forked_child(self._after_fork)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue = self._open_queue()
        if isinstance(self._queue, DiskQueue):
            self._queue.bind(self._lock)
        self._ledger = Ledger(self._queue.recovered)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._generation = 0  # bumped at each (re)binding: a stale task stops by itself
        self._waiter: Optional[asyncio.Future[None]] = None
        self._sleeper: Optional[asyncio.Future[bool]] = None
        self._flushers: List[asyncio.Future[None]] = []
        self._aborted = False
        self._cancel_reason: Optional[str] = None
        self._flush_target = 0
        self._queue_since = 0.0
        self._closed = False
        self._stopping = False
        self._deadline: Optional[float] = None
        self._inflight_batch: List[bytes] = []
        self._job: Optional[BatchJob] = None
        self._handed: Optional[Action] = None
        self._written_off = False
        self._pid = os.getpid()
        self._full_warning = FullQueueWarning()

    def _open_queue(self) -> Queue:
        path = self._options.queue_path
        if path is None:
            return MemoryQueue()
        fsync = self._options.queue_fsync
        return open_queue(
            lambda: DiskQueue(os.fspath(path), fsync), MemoryQueue, self._queue is None, path
        )

    def _after_fork(self) -> None:
        """In a forked child: the parent's queue and loop stay the parent's; start empty."""
        self._queue.forget_after_fork()
        self._reset()

    # -- binding to a loop ------------------------------------------------------------

    def _poke(self) -> None:
        """Make sure the task runs and looks at the queue (from any thread)."""
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop
        if running is not None and running is loop:
            self._wake()
            return
        if running is not None and self._bind(running):
            return
        if loop is not None and not loop.is_closed():
            # Closed meanwhile: the next use (or the exit hook) delivers.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def _bind(self, loop: asyncio.AbstractEventLoop, force: bool = False) -> bool:
        """Run the task on ``loop`` if there is none alive; True if it is bound to ``loop``."""
        with self._lock:
            current = self._loop
            alive = (
                current is not None
                and not current.is_closed()
                and self._task is not None
                and not self._task.done()
            )
            if alive and not force:
                return current is loop
            if current is loop and alive:
                return True
            # A first use, or the old loop is gone: what its task had in flight goes back.
            if self._ledger.inflight and not self._written_off:
                self._queue.requeue(self._inflight_batch)
                self._ledger.inflight = 0
                self._inflight_batch = []
            self._loop = loop
            self._waiter = None
            self._sleeper = None
            self._flushers = []
            self._aborted = False
            if self._task is not None and not self._task.done() and current is not None:
                # Its loop is alive but not running: it must never run this task again.
                with contextlib.suppress(RuntimeError):
                    current.call_soon_threadsafe(self._task.cancel)
            self._generation += 1
            self._task = loop.create_task(self._run(self._generation))
        return True

    def _wake(self) -> None:
        """On the loop: end the task's wait for work."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the task -----------------------------------------------------------------------

    async def _run(self, generation: int) -> None:
        try:
            while generation == self._generation:
                batch = await self._next_batch()
                if batch is None:
                    return
                with self._lock:
                    deadline = self._deadline
                try:
                    outcome = await self.deliver(batch, deadline, DropReason.SHUTDOWN)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # pragma: no cover - a bug must not lose the count
                    logger.exception("tracklane: unexpected error while sending a batch")
                    error = DeliveryError(f"internal error: {exc!r}")
                    batch = self._inflight_batch
                    outcome = Outcome(drops=[Drop(DropReason.RETRIES_EXHAUSTED, error, batch)])
                if generation != self._generation:
                    return  # rebound meanwhile: the batch went back to the queue
                # ``_follow`` may have settled batches and cut new ones meanwhile: the
                # outcome is the one of the batch in flight now.
                await self._settle(self._inflight_batch, outcome)
        except asyncio.CancelledError:
            if generation == self._generation and self._cancel_reason != "shutdown":
                # The loop is stopping (asyncio.run returned): the batch goes back to the
                # queue, for the next loop or the exit hook; at least once, never lost.
                with self._lock:
                    if self._ledger.inflight and not self._written_off:
                        self._queue.requeue(self._inflight_batch)
                        self._ledger.inflight = 0
                        self._inflight_batch = []
            # Connections belong to this loop: close them while it still runs.
            for close in self.on_loop_end:
                with contextlib.suppress(Exception):
                    close()
            raise

    async def _next_batch(self) -> Optional[List[bytes]]:
        options = self._options
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                wait = self._batch_wait()
                if wait is None and self._stopping:
                    return None
            if wait == 0.0:
                break
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(wait, _resolve, waiter) if wait is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        batch: List[bytes] = await self._queue.take(options.batch_size, self._lock, self._ledger)
        with self._lock:
            self._inflight_batch = batch
            self._written_off = False
            if len(self._queue):
                self._queue_since = time.monotonic()
        return batch

    async def deliver(
        self,
        messages: List[bytes],
        deadline: Optional[float],
        reason: DropReason,
        transport: Optional[AsyncTransport] = None,
    ) -> Outcome:
        """Walk one batch through the core's decisions, awaiting the transport.

        The task's own batches may be cut short by shutdown; an inline delivery (another
        ``transport``) is bounded by its ``deadline`` only.
        """
        clock = time.monotonic
        job = BatchJob(
            messages, self._policy, self._options.timeout, now_timestamp, deadline, reason
        )
        own = transport is None
        target = self._transport if transport is None else transport
        chain = self._chain if own else None
        if own:
            self._job = job
            self._handed = None
        action = job.start(clock())
        while not isinstance(action, Done):
            if isinstance(action, Send):
                if chain is not None:
                    result = await _send_chain(chain, action.body, action.timeout, self._follow)
                    job = self._job or job  # ``_follow`` may have moved on to later batches
                    handed, self._handed = self._handed, None
                    action = handed if handed is not None else job.answered(result, clock())
                else:
                    result = await _send(target, action.body, action.timeout)
                    action = job.answered(result, clock())
                continue
            if own:
                aborted = await self._sleep(action.seconds)
            else:
                aborted = False
                await asyncio.sleep(action.seconds)
            if not aborted:
                with self._lock:
                    self._ledger.retried()
            action = job.waited(clock(), aborted)
        return action.outcome

    def _follow(self, result: SendResult) -> Optional[Tuple[bytes, float]]:
        """In ``data_received``: the answer to the task's request in flight, settled now.

        Returns the next request's ``(body, timeout)`` to write in the same loop turn (the
        rest of a split batch, or the next batch when one is due), so a busy loop costs
        one turn per batch instead of two; or None, having left the next action in
        ``_handed`` for the task (a wait before a retry, shutdown, a durable queue).
        """
        job = self._job
        if job is None or self._handed is not None:
            return None
        action = job.answered(result, time.monotonic())
        if isinstance(action, Send):
            return action.body, action.timeout
        self._handed = action
        if not isinstance(action, Done) or self._queue.durable or self._aborted:
            return None
        with self._lock:
            if self._stopping or self._written_off or self._loop is not _running_loop():
                return None
            size = len(self._queue)
            resolved = self._ledger.resolved + len(self._inflight_batch)  # once settled
            if not size or seconds_until_due(
                size,
                self._batch_size,
                resolved < self._flush_target,
                time.monotonic() - self._queue_since,
                self._options.flush_interval,
            ):
                return None
        self._settle_now(self._inflight_batch, action.outcome)
        with self._lock:
            batch = take_batch(self._queue._items, self._batch_size)
            self._ledger.inflight = len(batch)
            self._inflight_batch = batch
            if len(self._queue):
                self._queue_since = time.monotonic()
        job = self._job = BatchJob(
            batch,
            self._policy,
            self._options.timeout,
            now_timestamp,
            None,
            DropReason.SHUTDOWN,
        )
        self._handed = None
        first = job.start(time.monotonic())
        if isinstance(first, Send):
            return first.body, first.timeout
        self._handed = first  # pragma: no cover - no deadline: a batch starts with a Send
        return None

    async def _sleep(self, seconds: float) -> bool:
        """Wait before a retry; True if shutdown cut it short."""
        if self._aborted:
            return True
        loop = asyncio.get_running_loop()
        sleeper = self._sleeper = loop.create_future()
        timer = loop.call_later(seconds, _resolve_false, sleeper)
        try:
            aborted: bool = await sleeper
            return aborted
        finally:
            timer.cancel()
            self._sleeper = None

    async def _settle(self, batch: List[bytes], outcome: Outcome) -> None:
        keep, drops = kept_for_next_process(outcome.drops, self._queue.durable)
        await self._queue.finish(batch, keep, self._lock, self._ledger)
        self._settle_counts(batch, outcome, drops, keep)

    def _settle_now(self, batch: List[bytes], outcome: Outcome) -> None:
        """``_settle`` for the memory queue, without awaiting (from ``_follow``)."""
        self._settle_counts(batch, outcome, outcome.drops, [])

    def _settle_counts(
        self, batch: List[bytes], outcome: Outcome, drops: List[Drop], keep: List[bytes]
    ) -> None:
        with self._lock:
            if self._written_off:  # counted as dropped at shutdown; correct the count
                self._written_off = False
                redeem_written_off(self._ledger, outcome.delivered, outcome.requests)
                return
            self._ledger.inflight = 0
            self._inflight_batch = []
            count_outcome(self._ledger, outcome.delivered, outcome.requests, drops)
            count = len(batch) - len(keep)
        for drop in drops:
            self._report(drop)
        with self._lock:
            self._ledger.resolved += count
        self._notify_flushers()


async def _send_chain(
    chain: Callable[..., Awaitable[SendResult]],
    body: bytes,
    timeout: float,
    follow: Callable[[SendResult], Optional[Tuple[bytes, float]]],
) -> SendResult:
    try:
        return await chain(body, timeout, follow)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # pragma: no cover - the HTTP transport does not raise
        return SendResult(error=exc)


async def _send(transport: AsyncTransport, body: bytes, timeout: float) -> SendResult:
    try:
        return await transport.send(body, timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a custom transport that raises: a failure without an answer
        return SendResult(error=exc)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - called from data_received, on the loop
        return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_false(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
