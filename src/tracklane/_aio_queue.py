"""Where an ``AsyncClient``'s messages wait: in memory, or in the durable SQLite queue.

The calls append from any thread without blocking (under the pipeline's lock, held for
microseconds); the worker task takes batches with ``await``. The durable queue's SQLite
work (inserts, leases, deletes) runs in one worker thread of its own, never on the loop:
an appended message is first *staged* in memory and written to disk by that thread within
milliseconds, together with whatever else arrived meanwhile (one transaction). So with
``AsyncClient`` a message is on disk a moment after the call returns, not before; a
process killed in that moment loses what was staged (``Client`` commits inside the call).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Deque, List, Optional

from ._buffer import DurableBuffer
from ._core.batching import take_batch
from ._core.ledger import Ledger

__all__ = ["DiskQueue", "MemoryQueue"]


class MemoryQueue:
    """A deque of encoded messages."""

    durable = False
    recovered = 0

    def __init__(self) -> None:
        self._items: Deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, data: bytes) -> None:
        """Queue a message (pipeline lock held)."""
        self._items.append(data)

    def popleft(self) -> bytes:
        """Remove the oldest message (pipeline lock held)."""
        return self._items.popleft()

    async def take(self, max_count: int, lock: threading.Lock, ledger: Ledger) -> List[bytes]:
        """The next batch, cut by count and exact size, counted in flight in the same step."""
        with lock:
            batch = take_batch(self._items, max_count)
            ledger.inflight = len(batch)
            return batch

    async def finish(
        self, batch: List[bytes], keep: List[bytes], lock: threading.Lock, ledger: Ledger
    ) -> None:
        """A batch is settled: nothing to do in memory."""

    def requeue(self, batch: List[bytes]) -> None:
        """Put an unsent batch back at the front (pipeline lock held)."""
        self._items.extendleft(reversed(batch))

    def drain(self) -> List[bytes]:
        """Everything queued, removed (pipeline lock held); dropped at shutdown."""
        items = list(self._items)
        self._items.clear()
        return items

    async def close(self) -> None:
        """Nothing to close."""

    def forget_after_fork(self) -> None:
        """Nothing inherited to forget."""


class DiskQueue:
    """The durable SQLite queue, driven from one thread of its own (see the module doc)."""

    durable = True

    def __init__(self, path: str, fsync: bool) -> None:
        self._disk = DurableBuffer(path, fsync)
        self.recovered = self._disk.recovered
        self._on_disk = len(self._disk)  # mirrored under the pipeline lock
        self._staged: Deque[bytes] = deque()
        self._writer_scheduled = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tracklane.disk")
        self._lock: Optional[threading.Lock] = None

    def __len__(self) -> int:
        return len(self._staged) + self._on_disk

    def append(self, data: bytes) -> None:
        """Stage a message; the disk thread writes it shortly (pipeline lock held)."""
        self._staged.append(data)
        if not self._writer_scheduled and self._lock is not None:
            self._schedule(self._lock)

    def _schedule(self, lock: threading.Lock) -> None:
        try:
            self._executor.submit(self._write_staged, lock)
        except RuntimeError:  # interpreter exit: written by close_now instead
            return
        self._writer_scheduled = True

    def bind(self, lock: threading.Lock) -> None:
        """Use the pipeline's lock for the staged messages and the mirror count."""
        self._lock = lock
        if self._staged and not self._writer_scheduled:
            self._schedule(lock)

    def popleft(self) -> bytes:
        """Remove the oldest message not yet on disk (``drop_oldest``; pipeline lock held)."""
        if self._staged:
            return self._staged.popleft()
        raise IndexError("the oldest messages are already on disk")

    def _write_staged(self, lock: threading.Lock) -> None:
        """In the disk thread: move staged messages to disk, in one transaction."""
        while True:
            with lock:
                items = list(self._staged)
                if not items:
                    self._writer_scheduled = False
                    return
            self._disk.append_many(items)
            with lock:
                for _ in items:
                    self._staged.popleft()
                self._on_disk += len(items)

    def _take(self, max_count: int, lock: threading.Lock, ledger: Ledger) -> List[bytes]:
        self._write_staged_now(lock)
        batch = self._disk.take(max_count)
        with lock:
            self._on_disk -= len(batch)
            ledger.inflight = len(batch)
        return batch

    def _write_staged_now(self, lock: threading.Lock) -> None:
        with lock:
            items = list(self._staged)
        if items:
            self._disk.append_many(items)
            with lock:
                for _ in items:
                    self._staged.popleft()
                self._on_disk += len(items)

    async def take(self, max_count: int, lock: threading.Lock, ledger: Ledger) -> List[bytes]:
        """Lease the next batch (in the disk thread), counted in flight in the same step."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._take, max_count, lock, ledger)

    def _finish(
        self, batch: List[bytes], keep: List[bytes], lock: threading.Lock, ledger: Ledger
    ) -> None:
        kept = self._disk.finish(batch, keep)
        with lock:
            self._on_disk += kept
            ledger.inflight -= kept

    async def finish(
        self, batch: List[bytes], keep: List[bytes], lock: threading.Lock, ledger: Ledger
    ) -> None:
        """Delete the delivered or dropped rows; ``keep`` returns to the queue."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._finish, batch, keep, lock, ledger)

    def requeue(self, batch: List[bytes]) -> None:
        """Release an unsent batch's lease, so it is taken again (pipeline lock held)."""
        self._on_disk += len(batch)
        with contextlib.suppress(RuntimeError):  # at exit the lease ends with the process
            self._executor.submit(self._disk.finish, batch, batch)

    def drain(self) -> List[bytes]:
        """Nothing is dropped at shutdown: it stays on disk for the next process."""
        return []

    def _close(self, lock: threading.Lock) -> None:
        self._write_staged_now(lock)
        self._disk.close()

    def close_now(self, lock: threading.Lock) -> None:
        """Write what is staged and close, in this thread (at exit, when no loop is left)."""
        self._executor.shutdown(wait=True)
        self._close(lock)

    async def close(self) -> None:
        """Write what is staged, then close the database (rows stay for the next process)."""
        lock = self._lock or threading.Lock()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close, lock)
        self._executor.shutdown(wait=False)

    def forget_after_fork(self) -> None:
        """In a forked child: leave the parent's database and lock alone."""
        self._disk.forget_after_fork()
