"""Where queued messages wait: in memory (a deque) or on disk (SQLite, crash-safe).

Both hold encoded messages in FIFO order and hand the worker one batch at a time:
``take`` leases a batch, ``finish`` settles it (delivered or dropped for good: gone;
``keep``: back in the queue, for the next process). The pipeline calls every method under
its own lock, so the buffers need no locking of their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Tuple

from ._core.batching import take_batch

__all__ = ["Buffer", "DurableBuffer", "MemoryBuffer", "open_buffer"]

logger = logging.getLogger("tracklane")


class MemoryBuffer(deque):  # type: ignore[type-arg]
    """The default buffer: a deque of encoded messages; lost if the process dies."""

    durable = False
    recovered = 0

    def take(self, max_count: int) -> List[bytes]:
        """Remove and return the next batch."""
        return take_batch(self, max_count)

    def finish(self, batch: List[bytes], keep: Iterable[bytes] = ()) -> int:
        """A batch is settled; memory keeps nothing across processes. Returns 0 kept."""
        return 0

    def drain(self) -> List[bytes]:
        """Remove and return everything queued (to be dropped at shutdown)."""
        items = list(self)
        self.clear()
        return items

    def close(self) -> None:
        """Nothing to close."""


Buffer = Any  # MemoryBuffer or DurableBuffer: same methods, checked by the tests of both.


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    holder TEXT NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_holder ON messages (holder, leased, id);
CREATE TABLE IF NOT EXISTS holders (
    holder TEXT PRIMARY KEY,
    pid INTEGER NOT NULL
);
"""


class DurableBuffer:
    """A queue in a SQLite file that survives the process being killed.

    Each process that opens the file is a *holder*: it registers itself and keeps an
    exclusive ``flock`` on a lock file of its own for as long as it lives. Its messages are
    rows marked with its holder id, so two live processes never send the same message. The
    kernel releases the lock the moment a holder dies (even by ``kill -9``), so the next
    process to open the queue sees at once that the lock is free and adopts the dead
    holder's rows, leased or not; they are sent again with the same ``messageId``.

    Each ``append`` commits before ``track()`` returns (WAL journal). With ``fsync=False``
    (``synchronous=NORMAL``) a commit survives a crash of the process but not of the
    machine; ``fsync=True`` (``synchronous=FULL``) survives power loss too, at the cost of
    one fsync per call.
    """

    durable = True

    def __init__(self, path: str, fsync: bool = False) -> None:
        import fcntl  # POSIX only; imported here so that the in-memory queue works anywhere

        self._fcntl = fcntl
        self.path = os.fspath(path)
        self._locks = Path(self.path + ".holders")
        self._locks.mkdir(parents=True, exist_ok=True)
        self.holder = uuid.uuid4().hex
        self._lock_file = open(self._locks / f"{self.holder}.lock", "w")  # noqa: SIM115
        fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            self._db = _open_database(self.path, fsync)
        except BaseException:
            self._lock_file.close()
            raise
        try:
            self._db.execute(
                "INSERT INTO holders (holder, pid) VALUES (?, ?)", (self.holder, os.getpid())
            )
            self.recovered = self._adopt_dead_holders()
            self._count = self._scalar(
                "SELECT COUNT(*) FROM messages WHERE holder = ? AND leased = 0", (self.holder,)
            )
        except BaseException:
            self.close()
            raise
        self._leased: List[Tuple[int, bytes]] = []

    def _scalar(self, sql: str, args: Tuple[Any, ...]) -> int:
        row = self._db.execute(sql, args).fetchone()
        return int(row[0]) if row else 0

    def _adopt_dead_holders(self) -> int:
        """Take over the rows of every holder whose lock is free (its process is gone)."""
        adopted = 0
        others = [
            r[0]
            for r in self._db.execute(
                "SELECT holder FROM holders WHERE holder != ?", (self.holder,)
            )
        ]
        for other in others:
            if not self._is_dead(other):
                continue
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "UPDATE messages SET holder = ?, leased = 0 WHERE holder = ?",
                    (self.holder, other),
                )
                adopted += max(cursor.rowcount, 0)
                self._db.execute("DELETE FROM holders WHERE holder = ?", (other,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            _unlink(self._locks / f"{other}.lock")
        if adopted:
            logger.info("tracklane: recovered %d queued messages from %s", adopted, self.path)
        return adopted

    def _is_dead(self, holder: str) -> bool:
        path = self._locks / f"{holder}.lock"
        try:
            handle = open(path, "a")  # noqa: SIM115
        except OSError:
            return True
        try:
            self._fcntl.flock(handle.fileno(), self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
        except OSError:
            return False  # held: the holder is alive
        finally:
            handle.close()
        return True

    def __len__(self) -> int:
        return self._count

    def append(self, data: bytes) -> None:
        """Store one message; committed when this returns."""
        self._db.execute("INSERT INTO messages (holder, body) VALUES (?, ?)", (self.holder, data))
        self._count += 1

    def append_many(self, items: List[bytes]) -> None:
        """Store several messages in one transaction; committed when this returns."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO messages (holder, body) VALUES (?, ?)",
                [(self.holder, data) for data in items],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._count += len(items)

    def popleft(self) -> bytes:
        """Remove and return the oldest message not in flight."""
        row = self._db.execute(
            "SELECT id, body FROM messages WHERE holder = ? AND leased = 0 ORDER BY id LIMIT 1",
            (self.holder,),
        ).fetchone()
        if row is None:
            raise IndexError("pop from an empty queue")
        self._db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
        self._count -= 1
        return bytes(row[1])

    def take(self, max_count: int) -> List[bytes]:
        """Lease the next batch (it stays on disk until ``finish``)."""
        rows = self._db.execute(
            "SELECT id, body FROM messages WHERE holder = ? AND leased = 0 ORDER BY id LIMIT ?",
            (self.holder, max_count),
        ).fetchall()
        queue = deque(bytes(r[1]) for r in rows)
        batch = take_batch(queue, max_count)
        leased = [(rows[i][0], batch[i]) for i in range(len(batch))]
        if leased:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE messages SET leased = 1 WHERE id = ?", [(i,) for i, _ in leased]
            )
            self._db.execute("COMMIT")
        self._leased = leased
        self._count -= len(leased)
        return batch

    def finish(self, batch: List[bytes], keep: Iterable[bytes] = ()) -> int:
        """Delete the leased batch but the ``keep`` messages, which return to the queue."""
        kept_ids = {id(m) for m in keep}
        done = [(i,) for i, body in self._leased if id(body) not in kept_ids]
        back = [(i,) for i, body in self._leased if id(body) in kept_ids]
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("DELETE FROM messages WHERE id = ?", done)
        self._db.executemany("UPDATE messages SET leased = 0 WHERE id = ?", back)
        self._db.execute("COMMIT")
        self._leased = []
        self._count += len(back)
        return len(back)

    def drain(self) -> List[bytes]:
        """Nothing is dropped at shutdown: queued messages stay on disk for the next process."""
        return []

    def close(self) -> None:
        """Close the database and give up the holder lock (rows stay for the next process)."""
        try:
            self._db.close()
        finally:
            self._lock_file.close()

    def forget_after_fork(self) -> None:
        """In a forked child: stop using the parent's handles without disturbing them.

        The inherited SQLite connection must never be closed here: SQLite's own POSIX
        locks are not inherited, so a close in the child could checkpoint and remove the
        WAL the parent still uses. It is parked for the life of the process instead. The
        lock file copy is closed, which leaves the parent's ``flock`` in place.
        """
        _INHERITED.append(self._db)
        self._lock_file.close()


_INHERITED: List[sqlite3.Connection] = []


def _open_database(path: str, fsync: bool, patience: float = 10.0) -> sqlite3.Connection:
    """Connect, switch to WAL and create the schema, waiting out other processes doing so.

    Switching the journal mode needs an exclusive lock for a moment, and SQLite reports
    "database is locked" at once (no busy handler) when two processes open a new file
    together; so the whole setup is retried until ``patience`` runs out.
    """
    deadline = time.monotonic() + patience
    pause = 0.005
    while True:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=patience)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            db.executescript(_SCHEMA)
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        except BaseException:
            db.close()
            raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def open_buffer(queue_path: Optional[str], fsync: bool = False) -> Callable[[], Buffer]:
    """A factory of fresh buffers (called at start and again in a forked child)."""
    if queue_path is None:
        return MemoryBuffer
    path = os.fspath(queue_path)

    def durable() -> DurableBuffer:
        return DurableBuffer(path, fsync)

    return durable
