"""The asyncio twin of ``_worker.Pipeline``: one delivery task on the event loop.

The same rules as the thread worker, decided by the same core (``seconds_until_due``,
``BatchJob``, ``Ledger``): a batch when ``batch_size`` messages wait, when the oldest is
``flush_interval`` old, or on flush; one request in flight; every wait has a deadline.

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
import weakref
from typing import Any, Callable, List, Optional

from ._aio_queue import DiskQueue, MemoryQueue
from ._core.batching import seconds_until_due, take_batch
from ._core.delivery import BatchJob, Done, Drop, Outcome, Send
from ._core.ledger import Ledger
from ._core.retry import RetryPolicy
from ._delivery import Sender
from ._stats import DropReason, FlushResult, Stats
from .config import Options, OverflowPolicy
from .exceptions import ConfigurationError, DeliveryError, QueueFullError, ShutdownError
from .messages import now_timestamp
from .transports import AsyncTransport, SendResult

__all__ = ["AsyncPipeline"]

logger = logging.getLogger("tracklane")
_FULL_WARNING_INTERVAL = 60.0
Queue = Any  # MemoryQueue or DiskQueue


class AsyncPipeline:
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
        self._batch_size = options.batch_size
        self._max_queue_size = options.max_queue_size
        self._queue: Queue = None
        self._reset()
        if hasattr(os, "register_at_fork"):
            method = weakref.WeakMethod(self._after_fork)

            def _child() -> None:
                bound = method()
                if bound is not None:
                    bound()

            os.register_at_fork(after_in_child=_child)

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
        self._written_off = False
        self._pid = os.getpid()
        self._last_full_warning = -_FULL_WARNING_INTERVAL

    def _open_queue(self) -> Queue:
        options = self._options
        if options.queue_path is None:
            return MemoryQueue()
        try:
            return DiskQueue(os.fspath(options.queue_path), options.queue_fsync)
        except Exception as exc:
            if self._queue is None:
                raise ConfigurationError(
                    f"queue_path: cannot open {options.queue_path!r}: {exc}"
                ) from exc
            logger.exception("tracklane: cannot reopen the durable queue; queueing in memory")
            return MemoryQueue()

    def _after_fork(self) -> None:
        """In a forked child: the parent's queue and loop stay the parent's; start empty."""
        self._queue.forget_after_fork()
        self._reset()

    # -- the calling side (any thread) ------------------------------------------------

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

    # -- flush and shutdown -----------------------------------------------------------

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

    def _flush_result(self, target: int, timeout: float) -> FlushResult:
        with self._lock:
            complete = self._ledger.resolved >= target
            stats = self._ledger.snapshot(len(self._queue))
            pending = target - self._ledger.resolved if not complete else 0
        if not complete:
            logger.warning(
                "tracklane: flush timed out after %.1fs with %d messages still pending",
                timeout,
                pending,
            )
        return FlushResult(complete=complete, pending=pending, stats=stats)

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
                self._ledger.delivered += outcome.delivered
                for drop in outcome.drops:
                    self._ledger.drop(drop.reason, len(drop.messages))
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
            batch = self._inflight_batch
            self._written_off = True
            self._ledger.resolved += len(batch)
            self._ledger.inflight = 0
            error = ShutdownError("the deadline passed while this batch was still being sent")
            drop = self._count_drop(DropReason.SHUTDOWN, error, batch)
        self._report(drop)

    def _drop_queued_locked(self) -> Optional[Drop]:
        if not len(self._queue):
            return None
        messages = self._queue.drain()
        if not messages:  # durable: everything stays on disk for the next process
            logger.info(
                "tracklane: %d messages stay in %s for the next process",
                len(self._queue),
                self._options.queue_path,
            )
            return None
        self._ledger.resolved += len(messages)
        error = ShutdownError("the client shut down before these messages could be sent")
        return self._count_drop(DropReason.SHUTDOWN, error, messages)

    def _notify_flushers(self) -> None:
        flushers, self._flushers = self._flushers, []
        for waiter in flushers:
            if not waiter.done():
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
                    outcome = Outcome(drops=[Drop(DropReason.RETRIES_EXHAUSTED, error, batch)])
                if generation != self._generation:
                    return  # rebound meanwhile: the batch went back to the queue
                await self._settle(batch, outcome)
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
                size = len(self._queue)
                wait: Optional[float] = None
                if self._stopping:
                    if not size or (
                        self._deadline is not None and time.monotonic() >= self._deadline
                    ):
                        return None
                    wait = 0.0
                elif size:
                    wait = seconds_until_due(
                        size,
                        options.batch_size,
                        self._ledger.resolved < self._flush_target,
                        time.monotonic() - self._queue_since,
                        options.flush_interval,
                    )
            if wait is not None and not wait:
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
        action = job.start(clock())
        while not isinstance(action, Done):
            if isinstance(action, Send):
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
                    self._ledger.retries += 1
            action = job.waited(clock(), aborted)
        return action.outcome

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
        count = len(batch)
        drops = outcome.drops
        keep: List[bytes] = []
        if self._queue.durable:
            keep = [m for d in drops if d.reason is DropReason.SHUTDOWN for m in d.messages]
            drops = [d for d in drops if d.reason is not DropReason.SHUTDOWN]
        await self._queue.finish(batch, keep, self._lock, self._ledger)
        with self._lock:
            if self._written_off:  # counted as dropped at shutdown; correct the count
                self._written_off = False
                self._ledger.undrop(DropReason.SHUTDOWN, outcome.delivered)
                self._ledger.delivered += outcome.delivered
                return
            self._ledger.inflight = 0
            self._inflight_batch = []
            self._ledger.delivered += outcome.delivered
            for drop in drops:
                self._count_drop(drop.reason, drop.error, drop.messages)
            count -= len(keep)
        for drop in drops:
            self._report(drop)
        with self._lock:
            self._ledger.resolved += count
        self._notify_flushers()


async def _send(transport: AsyncTransport, body: bytes, timeout: float) -> SendResult:
    try:
        return await transport.send(body, timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a custom transport that raises: a failure without an answer
        return SendResult(error=exc)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_false(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
