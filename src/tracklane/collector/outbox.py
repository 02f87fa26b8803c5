"""The durable outbox: which stored events each destination still has to get.

The events table is the log; the outbox keeps, per destination, a **cursor** (events up
to it have been claimed) and **pending** rows (claimed and not yet delivered: a range of
event ids, or one event waiting for a retry), plus **dead letters**. A collector **claims**
work under a lease (``lease_until``), delivers it, then **settles** the claim in one
transaction: delivered rows go, failures come back as rows due at their retry time (or as
dead letters), counters move. Claims and settlements are committed before and after
delivery, so a ``kill -9`` at any point loses nothing; what was in flight is delivered
again (at least once). They commit without an fsync (``synchronous=NORMAL`` for their
transactions; ingest keeps ``FULL``): the OS keeps what a killed process wrote, and a power
cut can only undo recent outbox progress, which redelivers (still at least once). Each
destination's cursor also records where it **started**: events stored before a destination
was added were never meant for it. The types and the :class:`Outbox` protocol shared with
the PostgreSQL outbox (``outbox_pg``) are in ``outbox_base`` and re-exported here.

This SQLite outbox serves one collector process per database file: at open it releases
every lease, since the process that held them is gone.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import orjson

from tracklane.collector._json import loads_stored
from tracklane.collector.outbox_base import (
    Claim,
    DeadLetter,
    DeliveryTrace,
    DestinationStatus,
    Outbox,
    PendingRow,
    Retry,
    Settlement,
    StoredEvent,
    WireEvent,
    build_traces,
    collector_id,
    iso_now,
    lag_seconds,
    stored_event,
    wire_events,
)
from tracklane.collector.storage import Storage, StorageError

__all__ = [
    "Claim",
    "DeadLetter",
    "DeliveryTrace",
    "DestinationStatus",
    "Outbox",
    "PendingRow",
    "Retry",
    "SQLiteOutbox",
    "Settlement",
    "StoredEvent",
    "WireEvent",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS route_cursor (
    destination TEXT PRIMARY KEY,
    position INTEGER NOT NULL,             -- events with id <= position have been claimed
    start INTEGER NOT NULL DEFAULT 0,      -- events with id <= start predate the destination
    delivered INTEGER NOT NULL DEFAULT 0,
    filtered INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,   -- failed attempts, retried or dead-lettered
    last_error TEXT,
    last_error_at TEXT,
    last_delivered_at TEXT
);
CREATE TABLE IF NOT EXISTS route_pending (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    first_event INTEGER NOT NULL,
    last_event INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,                  -- unix time from which it may be (re)tried
    lease_until REAL,                      -- held by lease_owner until then
    lease_owner TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS route_pending_due ON route_pending (destination, due_at);
CREATE TABLE IF NOT EXISTS route_dead (
    destination TEXT NOT NULL,
    event_id INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    dead_at TEXT NOT NULL,
    PRIMARY KEY (destination, event_id)
);
"""


# The wire form built by SQLite; the integrations object as JSON text, when it is one.
_WIRE_SELECT = (
    "SELECT id, write_key, message_id, CAST(json_set(body, '$.receivedAt', received_at,"
    " '$.timestamp', timestamp, '$.originalTimestamp', original_timestamp) AS BLOB),"
    " CASE WHEN json_type(body, '$.integrations') = 'object'"
    " THEN json_extract(body, '$.integrations') END"
    " FROM events WHERE id BETWEEN ? AND ? ORDER BY id"
)
# The same for a whole range in one row. The sqlite3 module releases the GIL around each step
# and waits for it after, so reading a claim row by row cost a wait per event whenever another
# thread ran Python (the warehouse's COPY and row-builder threads): 24 µs of wall time and 12
# of CPU per event measured in the router, and 1.2-2.6 ms per event beside a busy thread
# against 23-31 µs in one row (docs/performance.md). Wires are joined by newlines, which
# compact JSON never holds raw; the other columns are JSON arrays, which keep NULLs (and
# the integrations as text, parsed by loads_stored as before), so the lists stay aligned.
_WIRE_RANGE = (
    "SELECT json_group_array(id), json_group_array(write_key), json_group_array(message_id),"
    " CAST(group_concat(json_set(body, '$.receivedAt', received_at, '$.timestamp', timestamp,"
    " '$.originalTimestamp', original_timestamp), char(10)) AS BLOB),"
    " json_group_array(CASE WHEN json_type(body, '$.integrations') = 'object'"
    " THEN '' || json_extract(body, '$.integrations') END)"
    " FROM (SELECT * FROM events WHERE id BETWEEN ? AND ? ORDER BY id)"
)
_WireRow = Tuple[int, str, str, bytes, Optional[str]]


def _wire_rows(db: sqlite3.Connection, first: int, last: int) -> List[_WireRow]:
    """The wire rows of the events ``first`` to ``last``, oldest first (see _WIRE_RANGE)."""
    ids, keys, message_ids, wires, integrations = db.execute(_WIRE_RANGE, (first, last)).fetchone()
    if wires is None:
        return []
    columns = [orjson.loads(ids), orjson.loads(keys), orjson.loads(message_ids)]
    columns += [wires.split(b"\n"), orjson.loads(integrations)]
    rows: List[_WireRow] = list(zip(*columns))
    if any(len(column) != len(rows) for column in columns):  # never seen: read row by row
        return db.execute(_WIRE_SELECT, (first, last)).fetchall()
    if any(rows[i][0] > rows[i + 1][0] for i in range(len(rows) - 1)):
        rows.sort()
    return rows


def _has_sql_json(db: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, often before)."""
    try:
        db.execute("SELECT json_set('{}', '$.a', 1), json_type('{}', '$.a')").fetchone()
    except sqlite3.Error:
        return False
    return True


class SQLiteOutbox:
    """The outbox in the collector's SQLite file, writing through the store's writer."""

    def __init__(self, storage: Storage, lease_seconds: float = 600.0) -> None:
        """Create the outbox tables if needed and release leases of a previous process."""
        self.storage = storage
        self.lease_seconds = lease_seconds
        self.owner = collector_id()
        self._read_lock = threading.Lock()
        try:
            with storage.write_transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("UPDATE route_pending SET lease_until = NULL, lease_owner = NULL")
                columns = {row[1] for row in db.execute("PRAGMA table_info(route_cursor)")}
                if "start" not in columns:  # made by a version that did not record it
                    db.execute(
                        "ALTER TABLE route_cursor ADD COLUMN start INTEGER NOT NULL DEFAULT 0"
                    )
            self._reader = sqlite3.connect(
                str(storage.path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._sql_json = _has_sql_json(self._reader)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot use {storage.path} for the outbox: {exc}") from exc

    def register(self, destinations: Iterable[str]) -> None:
        """Start a cursor for each new destination at the newest stored event.

        Where it started is kept: older events were never meant for it (the debugger says
        so instead of deriving a status).
        """
        with self.storage.write_transaction() as db:
            head = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO route_cursor (destination, position, start)"
                " VALUES (?, ?, ?)",
                [(name, head, head) for name in destinations],
            )

    def head(self) -> int:
        """The id of the newest stored event (0 when none)."""
        with self._read_lock:
            return int(
                self._reader.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            )

    def claim(self, destination: str, limit: int, now: Optional[float] = None) -> Optional[Claim]:
        """Lease due retries, or else up to ``limit`` new events; ``None`` when idle."""
        now = time.time() if now is None else now
        lease = now + self.lease_seconds
        with self.storage.write_transaction(durable=False) as db:
            due = db.execute(
                "SELECT id, first_event, last_event, attempts FROM route_pending"
                " WHERE destination = ? AND due_at <= ?"
                " AND (lease_until IS NULL OR lease_until < ?) ORDER BY due_at, id LIMIT ?",
                (destination, now, now, limit),
            ).fetchall()
            rows: List[PendingRow] = []
            count = 0
            for row in due:
                if rows and count + row[2] - row[1] + 1 > limit:
                    break
                rows.append(PendingRow(*row))
                count += row[2] - row[1] + 1
            if not rows:
                position = db.execute(
                    "SELECT position FROM route_cursor WHERE destination = ?", (destination,)
                ).fetchone()
                if position is None:
                    raise StorageError(f"destination {destination!r} is not registered")
                last = db.execute(
                    "SELECT MAX(id) FROM (SELECT id FROM events WHERE id > ? ORDER BY id LIMIT ?)",
                    (position[0], limit),
                ).fetchone()[0]
                if last is None:
                    return None
                cursor = db.execute(
                    "INSERT INTO route_pending (destination, first_event, last_event, due_at)"
                    " VALUES (?, ?, ?, ?)",
                    (destination, position[0] + 1, last, now),
                )
                assert cursor.lastrowid is not None
                rows.append(PendingRow(cursor.lastrowid, position[0] + 1, last, 0))
                db.execute(
                    "UPDATE route_cursor SET position = ? WHERE destination = ?",
                    (last, destination),
                )
            db.executemany(
                "UPDATE route_pending SET lease_until = ?, lease_owner = ? WHERE id = ?",
                [(lease, self.owner, row.id) for row in rows],
            )
        return Claim(destination, tuple(rows), self.owner)

    def events(self, claim: Claim) -> List[StoredEvent]:
        """The stored events a claim covers, oldest first."""
        found: List[StoredEvent] = []
        with self._read_lock:
            for row in claim.rows:
                records = self._reader.execute(
                    "SELECT id, write_key, received_at, timestamp, original_timestamp, body"
                    " FROM events WHERE id BETWEEN ? AND ? ORDER BY id",
                    (row.first, row.last),
                ).fetchall()
                found.extend(
                    stored_event(event_id, key, received, timestamp, original, body, row.attempts)
                    for event_id, key, received, timestamp, original, body in records
                )
        return found

    def wire_events(self, claim: Claim) -> List[WireEvent]:
        """The stored events a claim covers, oldest first, encoded as they are sent.

        SQLite's JSON functions set the three times in the stored text (a key present is
        replaced where it stands, others are appended: what decoding, setting and encoding
        would give) in C with the GIL released, so the router decodes no message.
        """
        if not self._sql_json:
            return wire_events(self.events(claim))
        found: List[WireEvent] = []
        parsed: Dict[str, Dict[str, Any]] = {}
        with self._read_lock:
            for row in claim.rows:
                attempts = row.attempts
                for event_id, key, message_id, wire, integrations in _wire_rows(
                    self._reader, row.first, row.last
                ):
                    options = None
                    if integrations is not None:
                        options = parsed.get(integrations)
                        if options is None:
                            options = parsed[integrations] = loads_stored(integrations)
                    found.append(WireEvent(event_id, key, message_id, wire, options, attempts))
        return found

    def settle(self, claim: Claim, outcome: Settlement) -> None:
        """Record a claim's outcome in one transaction and release it."""
        now_text = iso_now()
        last_error = (outcome.dead or outcome.retries or [None])[-1]
        with self.storage.write_transaction(durable=False) as db:
            db.executemany(
                "DELETE FROM route_pending WHERE id = ?", [(row.id,) for row in claim.rows]
            )
            db.executemany(
                "INSERT INTO route_pending"
                " (destination, first_event, last_event, attempts, due_at, last_error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (claim.destination, r.event_id, r.event_id, r.attempts, r.due_at, r.error)
                    for r in outcome.retries
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO route_dead"
                " (destination, event_id, attempts, last_error, dead_at) VALUES (?, ?, ?, ?, ?)",
                [
                    (claim.destination, d.event_id, d.attempts, d.error, now_text)
                    for d in outcome.dead
                ],
            )
            db.execute(
                "UPDATE route_cursor SET delivered = delivered + ?, filtered = filtered + ?,"
                " skipped = skipped + ?, failures = failures + ?,"
                " last_error = COALESCE(?, last_error),"
                " last_error_at = CASE WHEN ? IS NULL THEN last_error_at ELSE ? END,"
                " last_delivered_at = CASE WHEN ? > 0 THEN ? ELSE last_delivered_at END"
                " WHERE destination = ?",
                (
                    outcome.delivered,
                    outcome.filtered,
                    outcome.skipped,
                    len(outcome.retries) + len(outcome.dead),
                    None if last_error is None else last_error.error,
                    None if last_error is None else last_error.error,
                    now_text,
                    outcome.delivered,
                    now_text,
                    claim.destination,
                ),
            )

    def next_due(self, destination: str) -> Optional[float]:
        """When the earliest unleased pending row of ``destination`` falls due."""
        with self._read_lock:
            row = self._reader.execute(
                "SELECT MIN(due_at) FROM route_pending WHERE destination = ?"
                " AND lease_until IS NULL",
                (destination,),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def status(self, destinations: Sequence[Tuple[str, str]]) -> List[DestinationStatus]:
        """The status of each ``(name, type)``."""
        now = time.time()
        result: List[DestinationStatus] = []
        with self._read_lock:
            db = self._reader
            for name, kind in destinations:
                row = db.execute(
                    "SELECT position, delivered, filtered, skipped, last_error, last_error_at,"
                    " last_delivered_at FROM route_cursor WHERE destination = ?",
                    (name,),
                ).fetchone()
                if row is None:
                    row = (0, 0, 0, 0, None, None, None)
                position = row[0]
                unclaimed = db.execute(
                    "SELECT COUNT(*) FROM events WHERE id > ?", (position,)
                ).fetchone()[0]
                claimed, retrying, oldest = db.execute(
                    "SELECT COALESCE(SUM(last_event - first_event + 1), 0),"
                    " COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0),"
                    " MIN(first_event) FROM route_pending WHERE destination = ?",
                    (name,),
                ).fetchone()
                dead = db.execute(
                    "SELECT COUNT(*) FROM route_dead WHERE destination = ?", (name,)
                ).fetchone()[0]
                start = oldest if oldest is not None else position + 1
                received = db.execute(
                    "SELECT received_at FROM events WHERE id >= ? ORDER BY id LIMIT 1", (start,)
                ).fetchone()
                lag = 0.0
                if received is not None and (unclaimed or claimed):
                    lag = lag_seconds(received[0], now)
                result.append(
                    DestinationStatus.from_counters(
                        name, kind, row[1:7], unclaimed + claimed, retrying, dead, lag
                    )
                )
        return result

    def dead_letters(self, destination: str, limit: int = 100) -> List[DeadLetter]:
        """The newest dead letters of ``destination``, with each message's id and last error."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT d.event_id, d.attempts, d.last_error, e.message_id, e.type, e.event,"
                " d.dead_at FROM route_dead d LEFT JOIN events e ON e.id = d.event_id"
                " WHERE d.destination = ? ORDER BY d.event_id DESC LIMIT ?",
                (destination, limit),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def replay(self, destination: str, now: Optional[float] = None) -> int:
        """Send every dead letter of ``destination`` again (due now); return how many."""
        now = time.time() if now is None else now
        with self.storage.write_transaction() as db:
            moved = db.execute(
                "INSERT INTO route_pending (destination, first_event, last_event, due_at)"
                " SELECT destination, event_id, event_id, ? FROM route_dead"
                " WHERE destination = ?",
                (now, destination),
            ).rowcount
            db.execute("DELETE FROM route_dead WHERE destination = ?", (destination,))
        return int(moved)

    def traces(self, event_ids: Sequence[int]) -> List[DeliveryTrace]:
        """Each destination's cursor, pending rows and dead letters among ``event_ids``."""
        if not event_ids:
            return []
        low, high = min(event_ids), max(event_ids)
        with self._read_lock:
            db = self._reader
            cursors = db.execute(
                "SELECT destination, position, start FROM route_cursor ORDER BY destination"
            ).fetchall()
            pending = db.execute(
                "SELECT destination, first_event, last_event, attempts, due_at, last_error"
                " FROM route_pending WHERE first_event <= ? AND last_event >= ?",
                (high, low),
            ).fetchall()
            dead = db.execute(
                "SELECT destination, event_id, attempts, last_error FROM route_dead"
                " WHERE event_id BETWEEN ? AND ?",
                (low, high),
            ).fetchall()
        return build_traces(cursors, pending, dead, event_ids)

    def close(self) -> None:
        """Close the reader connection (the store owns the writer)."""
        with self._read_lock:
            self._reader.close()
