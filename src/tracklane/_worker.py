"""The queue of encoded messages, its counters, and the one thread that delivers them."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, List, Optional

from ._buffer import Buffer, MemoryBuffer, open_buffer
from ._core.batching import seconds_until_full
from ._core.counters import PipelineCounters, open_queue, reset_in_forked_child
from ._core.delivery import Drop, Outcome
from ._core.intake import FullQueueWarning, queue_full, refuse_closed
from ._core.ledger import Ledger
from ._core.settling import (
    count_outcome,
    drop_unsent,
    kept_for_next_process,
    redeem_written_off,
    write_off,
)
from ._delivery import Sender
from ._ids import stock_message_ids
from ._stats import DropReason, FlushResult
from .config import Options, OverflowPolicy
from .exceptions import DeliveryError

__all__ = ["Pipeline"]

logger = logging.getLogger("tracklane")

_IDLE_WAIT = 5.0  # an idle worker re-checks its state this often, in case a wake-up was missed
# While messages arrive, the worker sleeps until the batch should be full (at least
# _NAP_MIN); when that is at most _NAP_MAX away, the call completing the batch need not wake it.
_NAP_MIN = 0.002
_NAP_MAX = 0.02
# A forked child resets the pipeline in an at-fork hook, so put() need not ask for the
# process id at every call (a system call: 4 % of a call); only where no hook exists.
_CHECK_PID = not hasattr(os, "register_at_fork")
# The worker keeps this many message ids made ahead: a batch's worth, within these bounds.
_ID_STOCK_MIN = 100
_ID_STOCK_MAX = 500

DropReporter = Callable[[Drop], None]


class Pipeline(PipelineCounters):
    """A bounded FIFO of encoded messages and the worker that sends them in batches.

    Every counter changes under one lock together with the queue, so a snapshot always
    satisfies ``tracked == delivered + pending + dropped``. At most one batch is in flight.
    """

    def __init__(self, options: Options, sender: Sender, report: DropReporter) -> None:
        self._options = options
        self._max_queue_size = options.max_queue_size
        self._batch_size = options.batch_size
        # An idle worker looks at the queue every half interval, so the first message of a
        # batch needs no wake-up call: waking the worker costs the caller a system call and
        # often a GIL hand-off, measured as the slowest 1 % of calls. While messages keep
        # coming the worker naps until the batch should be full (_next_batch_locked), so
        # the call completing a batch wakes it only when it sleeps longer than _NAP_MAX. It
        # is also woken on flush() and shutdown(), and for every first message when
        # flush_interval is 0.
        self._idle_wait = min(_IDLE_WAIT, max(options.flush_interval / 2, 0.005))
        self._wake_on_first = options.flush_interval == 0
        # put() yields the GIL only past this backlog (see there).
        self._yield_backlog = max(2 * options.batch_size, options.max_queue_size // 4)
        # ... and past half the queue ten times as often, so that it cannot fill up.
        self._urgent_backlog = options.max_queue_size // 2
        self._urgent_step = max(1, options.batch_size // 10)
        self._sender = sender
        self._report = report
        self._closed = False
        self._new_buffer = open_buffer(options.queue_path, options.queue_fsync)
        self._queue: Buffer = None
        self._reset()
        if self._queue:
            self._start()  # messages recovered from a durable queue: deliver them now
        reset_in_forked_child(self._after_fork)

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
        self._napping = False  # the worker waits at most _NAP_MAX for a batch to fill
        self._pace = 0.0  # seconds per message while the last full batch filled
        self._paced_at = -_IDLE_WAIT  # when that batch was cut (monotonic)
        self._flush_target = 0
        self._queue_since = 0.0
        self._stopping = False
        self._deadline: Optional[float] = None
        self._abort = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        self._full_warning = FullQueueWarning()

    def _open_buffer(self) -> Buffer:
        first = self._queue is None  # at construction: the caller hears of it
        return open_queue(self._new_buffer, MemoryBuffer, first, self._options.queue_path)

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
        full batch. The caller never hands the GIL to the worker while the queue is less
        than a quarter full: a call that lets go of the GIL waits for the worker's whole
        turn (building, sending and settling a batch) and for the operating system to wake
        it again, and one such call per batch is exactly the slowest 1 % of a loop of calls
        (docs/performance.md). The worker gets its turns when the caller sleeps or waits
        for I/O, as an application does between requests, and at the interpreter's switch
        interval. Only when a thread calls ``track()`` so fast that the backlog reaches a
        quarter of ``max_queue_size`` does the call that completes each further batch
        yield for a moment (past half of it, every tenth of a batch), so that the queue
        cannot grow until it drops.
        """
        if _CHECK_PID and self._pid != os.getpid():
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
                    if not self._napping:  # a napping worker wakes by itself within _NAP_MAX
                        self._work.notify()
                    return True
                if size < self._yield_backlog:
                    return True
                if (size + 1) % (batch if size < self._urgent_backlog else self._urgent_step):
                    return True
            elif self._closed:
                dropped = refuse_closed(ledger, data)
            else:
                dropped = self._overflow(data)
        if dropped is None:
            time.sleep(0)  # a large backlog: give the worker its turn (see above)
            return True
        self._report(dropped)
        return dropped.messages[0] is not data

    def _append(self, data: bytes) -> None:
        """Queue ``data`` (lock held), waking the worker by the same rules as :meth:`put`."""
        self._queue.append(data)
        self._ledger.accepted += 1
        self._appended()

    def _appended(self) -> None:
        """Wake the worker (lock held) as :meth:`put` would, after a message was queued."""
        size = len(self._queue)
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
        size = self._options.max_queue_size
        self._full_warning.warn(time.monotonic(), size, policy)
        drop = queue_full(self._ledger, self._queue, data, policy, size)
        if drop.messages[0] is not data:  # drop_oldest queued it in place of the oldest
            self._appended()
        return drop

    def begin_inline(self) -> None:
        """A ``sync_mode`` call starts delivering one message in the caller's thread."""
        with self._lock:
            self._ledger.begin_inline()

    def count_retry(self) -> None:
        """One more retry attempt (called by the sender)."""
        with self._lock:
            self._ledger.retried()

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
        stock = min(max(self._batch_size, _ID_STOCK_MIN), _ID_STOCK_MAX)
        while True:
            try:
                if not self._step(stop_when_flushed=False):
                    return
                if not self._stopping and len(self._queue) < self._batch_size:
                    # Ids for the next calls, made here rather than in them (_ids.py): on
                    # this thread only, never inline in a caller's flush or shutdown, and
                    # only when the worker has caught up (it naps next). With a backlog the
                    # worker's time is the delivery rate and the calls make their own.
                    stock_message_ids(stock)
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
            wait = self._batch_wait()
            if wait == 0.0:
                break
            if no_wait or self._stopping:
                return None
            self._sleep(self._idle_wait if wait is None else wait, len(self._queue))
        size = len(self._queue)
        if size >= options.batch_size and not self._stopping:
            now = time.monotonic()
            self._pace = max(now - self._queue_since, 0.0) / size
            self._paced_at = now
        batch: List[bytes] = self._queue.take(options.batch_size)
        self._ledger.inflight = len(batch)
        self._inflight_batch = batch
        self._written_off = False
        if self._queue:
            self._queue_since = time.monotonic()
        return batch

    def _sleep(self, longest: float, size: int) -> None:
        """Wait (lock held) until the next batch should be full, ``longest`` at most.

        The fill time is estimated from the pace of the ``size`` messages waiting, or, with
        none waiting, from the pace of the last full batch (once). When the wait is at most
        ``_NAP_MAX`` the worker is *napping*, and the call that completes the batch does not
        wake it (see put()); a longer sleep ends half a nap early, so that a nap covers the
        moment the batch fills.
        """
        batch_size = self._options.batch_size
        now = time.monotonic()
        if size:
            full = seconds_until_full(size, batch_size, now - self._queue_since)
        elif now - self._paced_at < longest:
            full = self._pace * batch_size
            self._paced_at = -longest  # once: if nothing came meanwhile, traffic paused
        else:
            full = longest
        if full > _NAP_MAX:
            full -= _NAP_MAX / 2
        wait = min(longest, max(full, _NAP_MIN))
        self._napping = wait <= _NAP_MAX
        self._work.wait(wait)
        self._napping = False

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
            self._written_off = True
            drop = write_off(self._ledger, self._inflight_batch)
            self._done.notify_all()
        self._report(drop)

    def _drop_queued_locked(self) -> Optional[Drop]:
        if not self._queue:
            return None
        messages = self._queue.drain()  # durable: empty, the rows stay for the next process
        drop = drop_unsent(self._ledger, messages, len(self._queue), self._options.queue_path)
        if drop is not None:
            self._done.notify_all()
        return drop

    def _settle(self, batch: List[bytes], outcome: Outcome) -> None:
        """Count the outcome, tell ``on_error``, then wake flushers: a flush that returns has
        seen every ``on_error`` call for what it waited on.

        A durable queue keeps what shutdown cut short, for the next process: not dropped.
        """
        with self._lock:
            if self._written_off:  # already counted as dropped at shutdown; correct the count
                self._written_off = False
                redeem_written_off(self._ledger, outcome.delivered, outcome.requests)
                self._queue.finish(batch, ())
                return
            keep, drops = kept_for_next_process(outcome.drops, self._queue.durable)
            self._queue.finish(batch, keep)
            self._ledger.inflight = 0
            count_outcome(self._ledger, outcome.delivered, outcome.requests, drops)
            count = len(batch) - len(keep)
        for drop in drops:
            self._report(drop)
        with self._lock:
            self._ledger.resolved += count
            self._done.notify_all()
