"""The queue of encoded messages, its counters, and the one thread that delivers them."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Callable, List, Optional

from ._buffer import Buffer, MemoryBuffer, open_buffer
from ._core.batching import seconds_until_due
from ._core.delivery import Drop, Outcome
from ._core.ledger import Ledger
from ._delivery import Sender
from ._stats import DropReason, FlushResult, Stats
from .config import Options, OverflowPolicy
from .exceptions import ConfigurationError, DeliveryError, QueueFullError, ShutdownError

__all__ = ["Pipeline"]

logger = logging.getLogger("tracklane")

_IDLE_WAIT = 5.0  # an idle worker re-checks its state this often, in case a wake-up was missed
_FULL_WARNING_INTERVAL = 60.0

DropReporter = Callable[[Drop], None]


class Pipeline:
    """A bounded FIFO of encoded messages and the worker that sends them in batches.

    Every counter changes under one lock together with the queue, so a snapshot always
    satisfies ``tracked == delivered + pending + dropped``. At most one batch is in flight.
    """

    def __init__(self, options: Options, sender: Sender, report: DropReporter) -> None:
        self._options = options
        self._max_queue_size = options.max_queue_size
        self._batch_size = options.batch_size
        # An idle worker looks at the queue every half interval, so the first message of a
        # batch needs no wake-up call: waking the worker costs the caller a GIL hand-off,
        # measured as the slowest 1 % of calls. It is woken when a batch is full, on
        # flush() and shutdown(), and for every first message when flush_interval is 0.
        self._idle_wait = min(_IDLE_WAIT, max(options.flush_interval / 2, 0.005))
        self._wake_on_first = options.flush_interval == 0
        self._sender = sender
        self._report = report
        self._closed = False
        self._new_buffer = open_buffer(options.queue_path, options.queue_fsync)
        self._queue: Buffer = None
        self._reset()
        if self._queue:
            self._start()  # messages recovered from a durable queue: deliver them now
        if hasattr(os, "register_at_fork"):
            method = weakref.WeakMethod(self._after_fork)

            def _child() -> None:
                bound = method()
                if bound is not None:
                    bound()

            os.register_at_fork(after_in_child=_child)

    def _reset(self) -> None:
        """Fresh locks, queue, counters and no thread: at start and in a forked child."""
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._start_lock = threading.Lock()
        self._queue = self._open_buffer()
        self._ledger = Ledger(self._queue.recovered)
        self._inflight_batch: List[bytes] = []
        self._written_off = False
        self._flush_target = 0
        self._queue_since = 0.0
        self._stopping = False
        self._deadline: Optional[float] = None
        self._abort = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._last_full_warning = -_FULL_WARNING_INTERVAL

    def _open_buffer(self) -> Buffer:
        try:
            return self._new_buffer()
        except Exception as exc:
            if self._queue is None:  # at construction: the caller hears of it
                raise ConfigurationError(
                    f"queue_path: cannot open {self._options.queue_path!r}: {exc}"
                ) from exc
            logger.exception("tracklane: cannot reopen the durable queue; queueing in memory")
            return MemoryBuffer()

    def _after_fork(self) -> None:
        """In a forked child: the parent's queue stays the parent's; start empty."""
        old = self._queue
        if old is not None and old.durable:
            old.forget_after_fork()
        self._reset()

    # -- the calling side -------------------------------------------------------------

    def put(self, data: bytes) -> bool:
        """Queue one encoded message; False (counted, reported) when it was not accepted.

        The hot path: one lock, one append, and a wake-up only when the queue reaches a
        full batch. When a backlog builds up (two batches or more waiting), the call that
        completes each further batch also lets go of the GIL for a moment: a thread that
        calls ``track()`` in a tight loop otherwise keeps the worker from running for the
        interpreter's switch interval (5 ms) at every step of every request, and the queue
        grows until it drops. Without a backlog no call ever yields.
        """
        if self._pid != os.getpid():
            self._after_fork()
        if self._thread is None:
            self._start()
        dropped: Optional[Drop] = None
        with self._lock:
            ledger = self._ledger
            ledger.tracked += 1  # inline, not ledger.accept(): the call costs more than this
            queue = self._queue
            size = len(queue)
            if size < self._max_queue_size and not self._closed:
                queue.append(data)
                ledger.accepted += 1
                if size == 0:
                    self._queue_since = time.monotonic()
                    if self._wake_on_first:
                        self._work.notify()
                    return True
                batch = self._batch_size
                if size + 1 == batch:
                    self._work.notify()
                    return True
                if (size + 1) % batch or size < batch:
                    return True
            elif self._closed:
                dropped = self._count_drop(
                    DropReason.SHUTDOWN, ShutdownError("the client is shut down"), [data]
                )
            else:
                dropped = self._overflow(data)
        if dropped is None:
            time.sleep(0)  # a backlog: give the worker its turn (see above)
            return True
        self._report(dropped)
        return dropped.messages[0] is not data

    def _append(self, data: bytes) -> None:
        """Queue ``data`` (lock held), waking the worker by the same rules as :meth:`put`."""
        queue = self._queue
        queue.append(data)
        self._ledger.accepted += 1
        size = len(queue)
        if size == 1:
            self._queue_since = time.monotonic()
            if self._wake_on_first:
                self._work.notify()
        elif size == self._batch_size:
            self._work.notify()

    def _overflow(self, data: bytes) -> Optional[Drop]:
        """Apply the overflow policy to a full queue (lock held)."""
        policy = self._options.overflow
        if policy is OverflowPolicy.BLOCK:
            deadline = time.monotonic() + self._options.block_timeout
            self._work.notify()
            while len(self._queue) >= self._options.max_queue_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._done.wait(remaining)
            if len(self._queue) < self._options.max_queue_size and not self._closed:
                self._append(data)
                return None
        self._warn_full()
        error = QueueFullError(f"queue full ({self._options.max_queue_size} messages)")
        if policy is OverflowPolicy.DROP_OLDEST:
            oldest = self._queue.popleft()
            self._ledger.resolved += 1
            self._append(data)
            return self._count_drop(DropReason.QUEUE_FULL, error, [oldest])
        return self._count_drop(DropReason.QUEUE_FULL, error, [data])

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._last_full_warning >= _FULL_WARNING_INTERVAL:
            self._last_full_warning = now
            logger.warning(
                "tracklane: queue full (%d messages), dropping by policy %s; "
                "see client.stats() for counts",
                self._options.max_queue_size,
                self._options.overflow.value,
            )

    def _count_drop(self, reason: DropReason, error: DeliveryError, messages: List[bytes]) -> Drop:
        self._ledger.drop(reason, len(messages))
        return Drop(reason, error, messages)

    def count_refused(self, reason: DropReason) -> None:
        """Count a message refused before queueing (too large): tracked and dropped at once."""
        with self._lock:
            self._ledger.refuse(reason)

    def count_stubbed(self, data: bytes) -> bool:
        """Count a message a stub client accepted and sent nowhere: tracked and delivered."""
        with self._lock:
            self._ledger.stubbed()
        return True

    def begin_inline(self) -> None:
        """A ``sync_mode`` call starts delivering one message in the caller's thread."""
        with self._lock:
            self._ledger.begin_inline()

    def end_inline(self, outcome: Outcome) -> None:
        """Settle a ``sync_mode`` delivery started with :meth:`begin_inline`."""
        with self._lock:
            self._ledger.end_inline()
            self._ledger.delivered += outcome.delivered
            self._ledger.batches += outcome.requests
            for drop in outcome.drops:
                self._count_drop(drop.reason, drop.error, drop.messages)
        for drop in outcome.drops:
            self._report(drop)

    def count_retry(self) -> None:
        """One more retry attempt (called by the sender)."""
        with self._lock:
            self._ledger.retries += 1

    def stats(self) -> Stats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> Stats:
        return self._ledger.snapshot(len(self._queue))

    def flush(self, timeout: float) -> FlushResult:
        """Send everything queued now, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        if self._pid != os.getpid():
            self._after_fork()
        if self._thread is not None and self._thread is threading.current_thread():
            # Called from on_error inside the worker: waiting on ourselves would only time out.
            return self._flush_result(0, timeout)
        if self._thread is None and self._queue:
            self._start()
        with self._lock:
            target = self._ledger.accepted
            if target > self._flush_target:
                self._flush_target = target
                self._work.notify()
            if self._thread is None and not self._stopping:
                inline = True
            else:
                inline = False
                while self._ledger.resolved < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._done.wait(remaining)
        if inline:
            self._run_inline(deadline, stop_when_flushed=True)
        return self._flush_result(target, timeout)

    def _flush_result(self, target: int, timeout: float) -> FlushResult:
        with self._lock:
            complete = self._ledger.resolved >= target
            stats = self._stats_locked()
            pending = target - self._ledger.resolved if not complete else 0
        if not complete:
            logger.warning(
                "tracklane: flush timed out after %.1fs with %d messages still pending",
                timeout,
                pending,
            )
        return FlushResult(complete=complete, pending=pending, stats=stats)

    def shutdown(self, timeout: float) -> FlushResult:
        """Deliver what is queued within ``timeout``, drop the rest, stop the worker. Idempotent."""
        start = time.monotonic()
        deadline = start + timeout
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            target = self._ledger.accepted
            if not self._stopping:
                self._closed = True
                self._stopping = True
                self._deadline = deadline
                self._flush_target = target
                self._work.notify_all()
                self._done.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._abort.set()
                self._sender.transport.close()  # ends a request that is still in progress
                thread.join(0.5)
            if thread.is_alive():
                self._write_off_inflight()
        elif thread is None:
            self._run_inline(deadline, stop_when_flushed=False)
        with self._lock:
            leftover = self._drop_queued_locked()
            if self._thread is None or not self._thread.is_alive():
                self._queue.close()  # a durable queue's rows are now free for the next process
        if leftover is not None:
            self._report(leftover)
        return self._flush_result(target, timeout)

    # -- the worker side --------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="tracklane.consumer", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                # Interpreter shutting down: flush/shutdown deliver inline instead.
                logger.debug("tracklane: could not start the worker thread", exc_info=True)
                return
            self._thread = thread

    def _run(self) -> None:
        while True:
            try:
                if not self._step(stop_when_flushed=False):
                    return
            except Exception:  # pragma: no cover - a bug; keep delivering the rest
                logger.exception("tracklane: unexpected error in the worker; continuing")

    def _run_inline(self, deadline: float, stop_when_flushed: bool) -> None:
        """Deliver in the calling thread (no worker thread could run)."""
        while time.monotonic() < deadline or self._stopping:
            if not self._step(stop_when_flushed, inline_deadline=deadline):
                return

    def _step(self, stop_when_flushed: bool, inline_deadline: Optional[float] = None) -> bool:
        """Wait for a batch, send it, settle it. False when there is nothing more to do."""
        leftover: Optional[Drop] = None
        with self._lock:
            batch = self._next_batch_locked(stop_when_flushed or inline_deadline is not None)
            if batch is None:
                leftover = self._drop_queued_locked() if self._stopping else None
            deadline = self._deadline if inline_deadline is None else inline_deadline
        if batch is None:
            if leftover is not None:
                self._report(leftover)
            return False
        try:
            outcome = self._sender.deliver(batch, self._abort, deadline)
        except Exception as exc:  # pragma: no cover - a bug in delivery must not lose the count
            logger.exception("tracklane: unexpected error while sending a batch")
            error = DeliveryError(f"internal error: {exc!r}")
            outcome = Outcome(drops=[Drop(DropReason.RETRIES_EXHAUSTED, error, batch)])
        self._settle(batch, outcome)
        return True

    def _next_batch_locked(self, no_wait: bool) -> Optional[List[bytes]]:
        options = self._options
        while True:
            queue = self._queue
            size = len(queue)
            if self._stopping:
                if not size or (self._deadline is not None and time.monotonic() >= self._deadline):
                    return None
                break
            if size:
                wait = seconds_until_due(
                    size,
                    options.batch_size,
                    self._ledger.resolved < self._flush_target,
                    time.monotonic() - self._queue_since,
                    options.flush_interval,
                )
                if not wait:
                    break
                if no_wait:
                    return None
                self._work.wait(wait)
            else:
                if no_wait:
                    return None
                self._work.wait(self._idle_wait)
        batch: List[bytes] = self._queue.take(options.batch_size)
        self._ledger.inflight = len(batch)
        self._inflight_batch = batch
        self._written_off = False
        if self._queue:
            self._queue_since = time.monotonic()
        return batch

    def _write_off_inflight(self) -> None:
        """Shutdown's deadline passed with a request still in flight: count its batch now.

        The worker thread is a daemon and dies with the interpreter, so waiting longer is
        no use. The batch is counted as dropped (``shutdown``) and reported; should its
        request still succeed later, ``_settle`` moves it over to ``delivered``. A durable
        queue keeps the batch on disk instead, for the next process.
        """
        with self._lock:
            if not self._ledger.inflight or self._written_off or self._queue.durable:
                return
            batch = self._inflight_batch
            self._written_off = True
            self._ledger.resolved += len(batch)
            self._ledger.inflight = 0
            self._done.notify_all()
            error = ShutdownError("the deadline passed while this batch was still being sent")
            drop = self._count_drop(DropReason.SHUTDOWN, error, batch)
        self._report(drop)

    def _drop_queued_locked(self) -> Optional[Drop]:
        if not self._queue:
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
        self._done.notify_all()
        error = ShutdownError("the client shut down before these messages could be sent")
        return self._count_drop(DropReason.SHUTDOWN, error, messages)

    def _settle(self, batch: List[bytes], outcome: Outcome) -> None:
        """Count the outcome, tell ``on_error``, then wake flushers: a flush that returns has
        seen every ``on_error`` call for what it waited on.

        A durable queue keeps what shutdown cut short, for the next process: not dropped.
        """
        count = len(batch)
        drops = outcome.drops
        with self._lock:
            if self._written_off:  # already counted as dropped at shutdown; correct the count
                self._written_off = False
                self._ledger.undrop(DropReason.SHUTDOWN, outcome.delivered)
                self._ledger.delivered += outcome.delivered
                self._ledger.batches += outcome.requests
                self._queue.finish(batch, ())
                return
            keep: List[bytes] = []
            if self._queue.durable:
                keep = [m for d in drops if d.reason is DropReason.SHUTDOWN for m in d.messages]
                drops = [d for d in drops if d.reason is not DropReason.SHUTDOWN]
            self._queue.finish(batch, keep)
            self._ledger.inflight = 0
            self._ledger.delivered += outcome.delivered
            self._ledger.batches += outcome.requests
            for drop in drops:
                self._count_drop(drop.reason, drop.error, drop.messages)
            count -= len(keep)
        for drop in drops:
            self._report(drop)
        with self._lock:
            self._ledger.resolved += count
            self._done.notify_all()

    def stopped(self) -> bool:
        """True once shutdown has begun."""
        return self._stopping
