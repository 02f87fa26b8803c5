"""SQLite storage for the collector (stdlib :mod:`sqlite3`, WAL, ``synchronous=FULL``).

One writer connection and one reader connection, each behind its own lock, so a
read never waits for a write's fsync. Every call blocks: from async code run it in a
thread (the app uses ``run_in_threadpool``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from tracklane.collector import _message_ids as message_ids
from tracklane.collector import _statements as statements
from tracklane.collector._json import loads_stored

__all__ = [
    "EventFilter",
    "EventRow",
    "Storage",
    "StorageError",
    "StoredMessage",
    "bind_none_directly",
]

_log = logging.getLogger("tracklane.collector")

SCHEMA_VERSION = 3
PAGE_SIZE = 8192  # for new files; measured in docs/performance.md
# Pages the WAL holds before a commit copies them into the database file: SQLite's default.
# With a unique index on random messageIds (schema 1), 10,000 pages gained 21 %, since a
# checkpoint copies each index page once however many commits rewrote it. Since the ids
# are deduplicated apart from events (schema 2), commits append pages: 1,000 and 10,000
# pages measured the same (6 interleaved pairs, docs/performance.md), and 1,000 keeps the
# WAL file near 8 MB instead of 80 MB and a restart after kill -9 has less to read.
WAL_CHECKPOINT_PAGES = 1_000

_EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY,  -- rows are never deleted, so ids only grow
    write_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    user_id TEXT,
    anonymous_id TEXT,
    event TEXT,
    received_at TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    original_timestamp TEXT,
    body TEXT NOT NULL
);
"""
_EVENT_COLUMNS = (
    "id, write_key, message_id, type, user_id, anonymous_id, event, received_at, timestamp,"
    " original_timestamp, body"
)
_SCHEMA = (
    _EVENTS_TABLE.format(name="events")
    + message_ids.SCHEMA
    + """
DROP INDEX IF EXISTS events_user_id;
DROP INDEX IF EXISTS events_anonymous_id;
"""
)
# No index on events but their ids. (write key, messageId) pairs are deduplicated by
# _message_ids, which writes them sorted in batches rather than one random index page per
# event. No index by userId or anonymousId either: each of them cost a random B-tree page
# written (to the WAL, then checkpointed) per stored event, about 10 µs of CPU per event, a
# third of what SQLite spent on ingest (docs/performance.md). Reads filtered by user scan
# from the newest event, which their LIMIT bounds.

# The index of the pairs merged so far (the events up to ``through``), built from the
# events in key order, with their write keys numbered (see _message_ids.pair_key).
_INDEX_FROM_EVENTS = """
INSERT OR IGNORE INTO write_keys (write_key)
    SELECT DISTINCT write_key FROM events WHERE id <= (SELECT through FROM message_ids_merged);
INSERT OR IGNORE INTO message_ids (pair)
    SELECT w.id || ':' || e.message_id FROM events AS e JOIN write_keys AS w USING (write_key)
    WHERE e.id <= (SELECT through FROM message_ids_merged) ORDER BY 1;
"""
# Schema version 1 kept the pairs unique with UNIQUE (write_key, message_id) on events:
# the table is copied into one without it, and every pair goes to message_ids.
_FROM_VERSION_1 = (
    _EVENTS_TABLE.format(name="events_v2")
    + f"INSERT INTO events_v2 ({_EVENT_COLUMNS}) SELECT {_EVENT_COLUMNS} FROM events;"
    + """
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
"""
    + message_ids.SCHEMA
    + "UPDATE message_ids_merged SET through = (SELECT COALESCE(MAX(id), 0) FROM events);"
    + _INDEX_FROM_EVENTS
)
# Schema version 2 keyed message_ids with the write key itself (its length, a colon, the
# write key, the messageId): the index is built again with the write keys' numbers.
_FROM_VERSION_2 = "DROP TABLE IF EXISTS message_ids;" + message_ids.SCHEMA + _INDEX_FROM_EVENTS
# What an upgrade does, for the log (measured: docs/collector.md).
_UPGRADES = {
    1: "its events are copied into a table without a unique index (about 20 s per million events)",
    2: "its messageId index is built again (about 3 s per million events)",
}

_INSERT = (
    "INSERT INTO events (write_key, message_id, type, user_id, anonymous_id, event,"
    " received_at, timestamp, original_timestamp, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Rows per INSERT statement. One statement for many rows matters more than it seems: the
# sqlite3 module releases the GIL around every step, and executemany() steps once per row,
# so with request threads busy in Python the writer waited for the GIL again at every row
# (measured: 130 µs of wall time per row for 30 µs of CPU under load). Each wait is for the
# event loop to finish what it is doing in Python, so a group commit costs as many waits as
# it has statements. A group's rows go in statements of 100 rows (a client's full batch: one
# statement for a request of one) and then of powers of two (``_statements``: compiling a
# statement for every count of rows cost more than the waits), where SQLite allows 1,000
# bound variables (SQLite 3.32 and later allow 32,766; Python 3.11 reads the limit), else
# 64 rows, under SQLite's oldest limit of 999.
_FULL_ROWS_PER_STATEMENT = 100
_COLUMNS = 10
_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_TEMPLATE = _INSERT.partition(" VALUES ")[0] + " VALUES {}"
_insert_statements: Dict[int, str] = {}


def _rows_per_statement(connection: sqlite3.Connection) -> int:
    """The rows of a full INSERT on ``connection`` (by its bound-variable limit)."""
    getlimit = getattr(connection, "getlimit", None)  # Python 3.11+
    variables: int = 999
    if getlimit is not None:
        variables = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # type: ignore[attr-defined]
    rows = variables // _COLUMNS
    if rows >= _FULL_ROWS_PER_STATEMENT:
        return _FULL_ROWS_PER_STATEMENT
    return 1 << (max(rows, 1).bit_length() - 1)  # a power of two, as the smaller ones


def _insert_many(
    connection: sqlite3.Connection, rows: Sequence[Sequence[Optional[str]]], sizes: List[int]
) -> Optional[int]:
    """Insert ``rows`` with statements of ``sizes`` rows (summing to all); return the last id."""
    last_id: Optional[int] = None
    start = 0
    for size in sizes:
        statement = statements.text(_insert_statements, _INSERT_TEMPLATE, _VALUES, size)
        chunk = rows[start : start + size]
        last_id = connection.execute(statement, list(chain.from_iterable(chunk))).lastrowid
        start += size
    return last_id


def bind_none_directly() -> None:
    """Make the sqlite3 module bind ``None`` without its search for an adapter (process-wide).

    It binds every value but an int, float, str or bytearray through its adaptation
    protocol. For ``None`` that builds a tuple key, misses in its adapters, then asks the
    protocol type for ``__adapt__``, which raises an AttributeError (its message formatted,
    then cleared): about 2,600 instructions per ``None``, a fifth of storing a row holding
    two (callgrind, docs/performance.md). With an adapter registered for it, the search ends
    at the first lookup. Adapters are global to a process: the writer process calls this,
    never ``serve_in_thread``, which runs inside someone else's process.
    """
    sqlite3.register_adapter(type(None), _as_null)


def _as_null(value: None) -> None:
    return value


StrPath = Union[str, "os.PathLike[str]"]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite's busy handler alone orders writers
    fcntl = None  # type: ignore[assignment]


class _ProcessWriteLock:
    """An exclusive lock on ``<db>-writelock`` taken around each write transaction.

    Several processes write to one file with ``tracklane serve --workers``: SQLite lets one
    at a time in and makes the others retry from its busy handler, sleeping 1 to 100 ms
    between tries; a waiter on this lock wakes as soon as the holder commits. Held only
    with the store's own write lock, so one thread per process waits on it.
    """

    def __init__(self, database: Path) -> None:
        self._fd: Optional[int] = None
        if fcntl is not None:
            try:
                self._fd = os.open(f"{database}-writelock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:  # a read-only directory: SQLite's own locking still holds
                self._fd = None

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._fd is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StorageError(Exception):
    """The database file cannot be used by the collector."""


class StoredMessage(NamedTuple):
    """One accepted message, ready to insert (timestamps already ISO-8601 UTC ``...Z``).

    A named tuple in ``_INSERT`` column order: built once per stored message, it costs a
    third of a frozen dataclass, and it is the row itself.
    """

    write_key: str
    message_id: str
    type: str
    user_id: Optional[str]
    anonymous_id: Optional[str]
    event: Optional[str]
    received_at: str
    timestamp: str
    original_timestamp: Optional[str]
    body: str  # the message as received (JSON), with a messageId assigned if it had none

    def as_row(self) -> Tuple[Optional[str], ...]:
        """Return the values in ``_INSERT`` column order."""
        return self


@dataclass(frozen=True)
class EventFilter:
    """Read filters; ``None`` means "any". ``since`` is an ISO-8601 UTC ``...Z`` string.

    Cursor (the storage sequence ``seq``, which only grows): ``after`` gives the events
    with a greater seq, oldest first; ``before`` those with a smaller one, newest first.
    ``user`` matches userId or anonymousId; ``text`` is a case-insensitive (ASCII)
    substring of the stored JSON; ``write_key_prefix`` matches the start of the key.
    """

    write_key: Optional[str] = None
    type: Optional[str] = None
    user_id: Optional[str] = None
    anonymous_id: Optional[str] = None
    event: Optional[str] = None
    since: Optional[str] = None
    after: Optional[int] = None
    before: Optional[int] = None
    user: Optional[str] = None
    text: Optional[str] = None
    write_key_prefix: Optional[str] = None

    def where(self) -> Tuple[str, List[Any]]:
        """Return a SQL ``WHERE`` clause (or ``""``) and its parameters."""
        clauses: List[str] = []
        params: List[Any] = []
        for column, value in (
            ("write_key", self.write_key),
            ("type", self.type),
            ("user_id", self.user_id),
            ("anonymous_id", self.anonymous_id),
            ("event", self.event),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            clauses.append("received_at >= ?")
            params.append(self.since)
        if self.after is not None:
            clauses.append("id > ?")
            params.append(self.after)
        if self.before is not None:
            clauses.append("id < ?")
            params.append(self.before)
        if self.user is not None:
            clauses.append("(user_id = ? OR anonymous_id = ?)")
            params += [self.user, self.user]
        if self.text is not None:
            clauses.append("body LIKE ? ESCAPE '\\'")
            params.append(f"%{_like_escape(self.text)}%")
        if self.write_key_prefix is not None:
            clauses.append("substr(write_key, 1, ?) = ?")
            params += [len(self.write_key_prefix), self.write_key_prefix]
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class EventRow:
    """One stored event as read back: its sequence, write key, times and JSON body."""

    seq: int
    write_key: str
    received_at: str
    timestamp: str
    original_timestamp: Optional[str]
    body: str

    def to_event(self) -> Dict[str, Any]:
        """Return the event as the read API serves it (the body plus times and ``seq``)."""
        event: Dict[str, Any] = loads_stored(self.body)
        event["receivedAt"] = self.received_at
        event["timestamp"] = self.timestamp
        event["originalTimestamp"] = self.original_timestamp
        event["seq"] = self.seq
        return event


@dataclass
class _Ticket:
    """One insert() call waiting for (or done with) its group commit."""

    rows: Sequence[Tuple[Optional[str], ...]]
    stored: int = 0
    done: bool = False
    error: Optional[Exception] = None


class Storage:
    """The collector's event store in one SQLite file."""

    def __init__(self, path: StrPath) -> None:
        """Open (creating if needed) the database at ``path``; raises StorageError."""
        if str(path) in ("", ":memory:"):
            raise StorageError("the collector needs a database file, not an in-memory database")
        self.path = Path(path)
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: List[_Ticket] = []
        self._read_lock = threading.Lock()
        self._closed = False
        self._process_lock = _ProcessWriteLock(self.path)
        self._writer = self._connect()
        self._message_ids = message_ids.MessageIds()
        self._rows_per_statement = _rows_per_statement(self._writer)
        try:
            self._init_schema()
            self._reader = self._connect()
        except BaseException:
            self._writer.close()
            self._process_lock.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        try:
            # A new file gets 8 KiB pages (an existing one keeps its own): SQLite spent 15-25 %
            # less CPU storing the bench's events than with 4 KiB pages, as fewer pages (and
            # WAL frames, each written and later checkpointed) hold the same rows.
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"cannot use WAL journal mode for {self.path} (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot use {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self) -> None:
        try:
            version = self._writer.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, 2, SCHEMA_VERSION):
                raise StorageError(f"{self.path} has unknown schema version {version}")
            schema = {1: _FROM_VERSION_1, 2: _FROM_VERSION_2}.get(version, _SCHEMA)
            if version in _UPGRADES:
                _log.warning(
                    "upgrading %s to schema version %d: %s",
                    self.path,
                    SCHEMA_VERSION,
                    _UPGRADES[version],
                )
            # IMMEDIATE, under the lock file: a deferred transaction upgraded to a write while
            # another process (an ingest worker) commits fails at once with "database is
            # locked" instead of waiting its turn.
            with self._process_lock.held():
                self._writer.executescript(
                    f"BEGIN IMMEDIATE; {schema} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot use {self.path}: {exc}") from exc

    def insert(self, messages: Sequence[StoredMessage]) -> int:
        """Store ``messages`` durably in one transaction; return how many were new.

        A message whose (write key, messageId) is already stored is ignored. Calls
        made at the same time from several threads share one commit (group commit):
        the thread that takes the write lock commits every waiting call's rows, so
        concurrent requests pay for one fsync instead of one each.
        """
        if not messages:
            return 0
        ticket = _Ticket(messages)
        with self._pending_lock:
            self._pending.append(ticket)
        with self._write_lock:
            if not ticket.done:
                with self._pending_lock:
                    group, self._pending = self._pending, []
                self._commit(group)
        if ticket.error is not None:
            raise ticket.error
        self.maintain()
        return ticket.stored

    def insert_gathered(self, gather: Callable[[], Sequence[Sequence[StoredMessage]]]) -> List[int]:
        """Take the write locks, then store what ``gather()`` returns in one transaction.

        ``gather`` returns several requests' messages; the result is how many of each were
        new. For a caller that queues requests itself (the collector's writer thread): one
        ``COMMIT`` and one fsync for all of them, shared with concurrent :meth:`insert` calls.
        Gathering once the locks are held lets the requests that arrived while another
        process (``--workers``) was committing join this commit instead of the next one.
        Call :meth:`maintain` after answering them.
        """
        with self._write_lock, self._process_lock.held():
            tickets = [_Ticket(messages) for messages in gather()]
            with self._pending_lock:
                group, self._pending = [*self._pending, *tickets], []
            self._commit_group(group)
        for ticket in tickets:
            if ticket.error is not None:
                raise ticket.error
        return [ticket.stored for ticket in tickets]

    def _commit(self, group: List[_Ticket]) -> None:
        """Insert every ticket's rows in one transaction (write lock held)."""
        with self._process_lock.held():
            self._commit_group(group)

    def _commit_group(self, group: List[_Ticket]) -> None:
        error: Optional[Exception] = None
        stored = False
        try:
            self._check_open()
            rows = group[0].rows if len(group) == 1 else [r for t in group for r in t.rows]
            fresh = self._insert_durably(rows)
            self._count_stored(group, fresh)
            stored = True
        except Exception as exc:
            error = exc
        finally:
            if not stored and not self._closed and self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            for ticket in group:  # every waiting caller learns the outcome
                if not stored:
                    ticket.stored = 0
                    ticket.error = error or StorageError("the insert was interrupted")
                ticket.done = True

    def _insert_durably(self, rows: Sequence[Sequence[Optional[str]]]) -> List[bool]:
        """Insert the new ones of ``rows`` and commit; return which were new (locks held).

        Rows that one statement takes (a request of 100 rows, or fewer) are one INSERT run as
        its own transaction: the sqlite3 module releases the GIL around each statement's step
        and takes it back after, so the insert, the commit and its fsync cost the writer one
        turn for the GIL instead of three (BEGIN, INSERT, COMMIT), and each turn can mean
        waiting for the event loop. More rows take several statements in one transaction.
        The write locks keep other writers out between the deduplication's reads and it.
        """
        ids = self._message_ids
        try:
            ids.sync(self._writer)
            fresh = ids.new(self._writer, rows)
            new_rows = rows if all(fresh) else [row for row, new in zip(rows, fresh) if new]
            if not new_rows:
                return fresh
            sizes = statements.sizes(len(new_rows), self._rows_per_statement)
            several = len(sizes) > 1
            if several:
                self._writer.execute("BEGIN IMMEDIATE")
            last_id = _insert_many(self._writer, new_rows, sizes)
            if several:
                self._writer.execute("COMMIT")
        except BaseException:
            ids.forget()
            raise
        ids.stored(last_id)
        return fresh

    def _count_stored(self, group: List[_Ticket], fresh: List[bool]) -> None:
        """Set each ticket's count of new rows from ``fresh`` (one flag per row, in order).

        A pair twice in the group is new for the first ticket, in group order, that brought
        it, as if the tickets had been inserted one after the other.
        """
        start = 0
        for ticket in group:
            end = start + len(ticket.rows)
            ticket.stored = fresh[start:end].count(True)
            start = end

    def maintain(self) -> None:
        """Do one short step of upkeep, if any is due: call it after answering a commit.

        Merges the newest messageIds into their index a few thousand at a time
        (``_message_ids``), in a transaction without fsync: what it writes can always be
        written again from the events, which are already durable. Otherwise reads the next
        ids of the index into the filter that spares lookups, while one is being built.
        :meth:`insert` calls it itself; callers of :meth:`insert_gathered` call it once they
        have answered. A failure is logged and the step tried again later.
        """
        ids = self._message_ids
        if not (ids.merge_due() or ids.filter_due()):
            return
        with self._write_lock, self._process_lock.held():
            if self._closed:
                return
            try:
                ids.sync(self._writer)
                if ids.merge_due():
                    self._writer.execute("PRAGMA synchronous=NORMAL")
                    try:
                        ids.merge_step(self._writer)
                    finally:
                        self._writer.execute("PRAGMA synchronous=FULL")
                elif ids.filter_due():
                    ids.filter_step(self._writer)
            except sqlite3.Error as exc:
                ids.forget()
                _log.warning(
                    "messageId index upkeep failed on %s (tried again later): %s",
                    self.path,
                    exc,
                )

    @contextmanager
    def write_transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Run writes of another table (the outbox) in one transaction on the writer.

        Holds the write lock, so it never waits on SQLite's busy handler behind an insert.
        ``durable=False`` commits without an fsync (``synchronous=NORMAL``): a kill -9
        loses nothing, a power cut may undo it (never what a later durable commit wrote).
        """
        with self._write_lock, self._process_lock.held():
            self._check_open()
            if not durable:
                self._writer.execute("PRAGMA synchronous=NORMAL")
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                except BaseException:
                    if self._writer.in_transaction:
                        self._writer.execute("ROLLBACK")
                    raise
                self._writer.execute("COMMIT")
            finally:
                if not durable:
                    self._writer.execute("PRAGMA synchronous=FULL")

    def query(self, where: EventFilter, limit: int) -> List[Dict[str, Any]]:
        """Return up to ``limit`` matching events as served by the read API.

        Newest first, or oldest first when ``where.after`` is set (see EventFilter).
        """
        return [row.to_event() for row in self.rows(where, limit)]

    def rows(self, where: EventFilter, limit: int) -> List[EventRow]:
        """Return up to ``limit`` matching rows, ordered as :meth:`query` orders them."""
        clause, params = where.where()
        order = "ASC" if where.after is not None else "DESC"
        sql = (
            "SELECT id, write_key, received_at, timestamp, original_timestamp, body FROM events"
            f"{clause} ORDER BY id {order} LIMIT ?"
        )
        with self._read_lock:
            self._check_open()
            found = self._reader.execute(sql, [*params, limit]).fetchall()
        return [EventRow(*row) for row in found]

    def count(self, where: EventFilter) -> int:
        """Return how many stored events match ``where``."""
        clause, params = where.where()
        with self._read_lock:
            self._check_open()
            row = self._reader.execute(f"SELECT COUNT(*) FROM events{clause}", params).fetchone()
        return int(row[0])

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")

    def close(self) -> None:
        """Close both connections; idempotent."""
        with self._write_lock, self._read_lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._writer.close()
            self._process_lock.close()
