"""The outbox in PostgreSQL (``--db postgresql://... --config ...``), shared by collectors.

Outbox rows are written **at ingest, in the same transaction as the events**: a
statement-level trigger on ``tracklane_events`` inserts one ``tracklane_outbox`` row per
new event and registered destination, so an insert the collector acknowledges has its
events stored and queued, and nothing depends on the order in which concurrent inserts'
ids become visible. A collector **claims** due rows of one destination with ``FOR UPDATE
SKIP LOCKED`` under a lease (``lease_owner`` = its collector id, ``lease_until``), so two
collectors never hold the same row; a heartbeat thread extends the leases it holds while
it delivers, so only a collector that stopped renewing (killed, hung, cut off) loses them,
and once they expire any other collector claims the rows again. A **settlement** deletes
delivered rows, puts failures back due at their retry time, moves dead letters to
``tracklane_outbox_dead`` with the last error and adds to the counters, in one
statement and only for rows the collector still holds. A claim reads its events in the
same statement that leases them.

Claims, settlements and lease renewals commit without waiting for their WAL flush
(``synchronous_commit = off`` on the outbox's connections; ingest, registration and
replay wait as usual): a ``kill -9`` of a collector loses nothing, and a crash of the
PostgreSQL server itself can only undo the last fraction of a second of outbox progress,
which is then delivered again (at least once). PostgreSQL writes WAL in order, so no later
durable commit can survive without them.

Times are unix seconds from the collectors' clocks (keep them in sync, e.g. NTP).
Needs the ``postgres`` extra (``pip install 'tracklane[postgres]'``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type

from tracklane.collector._outbox_pg_sql import CLAIM, SCHEMA, SETTLE
from tracklane.collector.outbox_base import (
    Claim,
    DeadLetter,
    DeliveryTrace,
    DestinationStatus,
    PendingRow,
    Settlement,
    StoredEvent,
    WireEvent,
    build_traces,
    collector_id,
    iso_now,
    lag_seconds,
    spliced_wire,
    stored_event,
    wire_events,
    wire_integrations,
)
from tracklane.collector.storage import StorageError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["DEFAULT_LEASE_SECONDS", "PostgresOutbox", "collector_id"]

logger = logging.getLogger("tracklane.collector.outbox")

DEFAULT_LEASE_SECONDS = 30.0


class PostgresOutbox:
    """The outbox in the PostgreSQL event store's database; several collectors share it."""

    def __init__(
        self,
        dsn: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        *,
        max_connections: int = 6,
        connect_timeout: float = 10.0,
    ) -> None:
        """Create the outbox tables and trigger if needed; start renewing this one's leases.

        The events table must exist (open the :class:`PostgresStorage` first).
        """
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError as exc:
            raise StorageError(
                f"the PostgreSQL outbox needs the postgres extra ({exc.name} is missing)"
            ) from None
        from tracklane.collector.storage_pg import _reason, _redacted

        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.lease_seconds = float(lease_seconds)
        self.owner = collector_id()
        self.path = _redacted(dsn)
        self._reason = _reason
        self._errors: Tuple[Type[BaseException], ...] = (psycopg.Error, PoolTimeout)
        self._closed = threading.Event()
        timeout = max(1, round(connect_timeout))
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": timeout},
            timeout=connect_timeout,
            open=False,
            name="tracklane-outbox",
            configure=_configure,
        )
        try:
            with psycopg.connect(dsn, connect_timeout=timeout) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('tracklane.collector.schema'))")
                conn.execute(SCHEMA)
            self._pool.open(wait=True, timeout=connect_timeout)
        except self._errors as exc:
            self._pool.close()
            raise StorageError(f"cannot use {self.path} for the outbox: {_reason(exc)}") from exc
        except BaseException:
            self._pool.close()
            raise
        self._held: Dict[int, Claim] = {}  # claims not yet settled, by id(): renewed
        self._held_lock = threading.Lock()
        self._heartbeat = threading.Thread(
            target=self._renew_leases, name="tracklane.outbox.heartbeat", daemon=True
        )
        self._heartbeat.start()

    def _run(self, sql: str, params: Any = None, durable: bool = False) -> List[Tuple[Any, ...]]:
        """One statement in its own transaction; ``durable`` waits for its WAL flush."""
        if self._closed.is_set():
            raise StorageError("the outbox is closed")
        try:
            with self._pool.connection() as conn:
                if durable:
                    with conn.transaction():
                        conn.execute("SET LOCAL synchronous_commit TO on")
                        cursor = conn.execute(sql, params)
                        return list(cursor) if cursor.description is not None else []
                cursor = conn.execute(sql, params)
                return list(cursor) if cursor.description is not None else []
        except self._errors as exc:
            raise StorageError(f"outbox in {self.path}: {self._reason(exc)}") from exc

    def register(self, destinations: Iterable[str]) -> None:
        """Queue events stored from now on for each destination (new ones start empty).

        The newest event id at that moment is kept as where the destination starts.
        """
        names = list(destinations)
        self._run(
            "INSERT INTO tracklane_route_destinations (destination, start_event)"
            " SELECT unnest(%s::text[]), (SELECT COALESCE(MAX(id), 0) FROM tracklane_events)"
            " ON CONFLICT DO NOTHING",
            [names],
            durable=True,
        )

    def head(self) -> int:
        """The id of the newest stored event (0 when none)."""
        return int(self._run("SELECT COALESCE(MAX(id), 0) FROM tracklane_events")[0][0])

    def claim(self, destination: str, limit: int, now: Optional[float] = None) -> Optional[Claim]:
        """Lease up to ``limit`` due rows nobody holds, oldest due first; ``None`` when idle.

        Their events are read in the same statement and kept in the claim.
        """
        now = time.time() if now is None else now
        records = self._run(
            CLAIM,
            {
                "d": destination,
                "now": now,
                "limit": limit,
                "lease": now + self.lease_seconds,
                "owner": self.owner,
            },
        )
        if not records:
            return None
        rows = tuple(PendingRow(r[0], r[0], r[0], r[1]) for r in records)
        claim = Claim(destination, rows, self.owner, tuple(records))
        with self._held_lock:
            self._held[id(claim)] = claim
        return claim

    def events(self, claim: Claim) -> List[StoredEvent]:
        """The stored events a claim covers, oldest first."""
        return [
            stored_event(event_id, key, received, timestamp, original, body, attempts)
            for event_id, attempts, key, _, received, timestamp, original, body in claim.records
            if body is not None
        ]

    def wire_events(self, claim: Claim) -> List[WireEvent]:
        """The stored events a claim covers, oldest first, encoded as they are sent.

        The body's text is edited (:func:`spliced_wire`) rather than decoded and encoded;
        a message is decoded only to read its ``integrations`` object, when it has one,
        or when the edit is not sure of the result.
        """
        found: List[WireEvent] = []
        for (
            event_id,
            attempts,
            key,
            message_id,
            received,
            timestamp,
            original,
            body,
        ) in claim.records:
            if body is None:
                continue
            wire = spliced_wire(body, received, timestamp, original)
            if wire is None:
                event = stored_event(event_id, key, received, timestamp, original, body, attempts)
                found.extend(wire_events([event]))
                continue
            integrations = None
            if b'"integrations"' in wire:
                integrations = wire_integrations(wire)
            found.append(WireEvent(event_id, key, message_id, wire, integrations, attempts))
        return found

    def settle(self, claim: Claim, outcome: Settlement) -> None:
        """Record a claim's outcome in one statement, for the rows this collector holds.

        Rows another collector took over (this one's lease expired) are left to it, and
        so are their counts: each outbox row is counted once, by whoever settles it.
        """
        retries = outcome.retries
        retried = {retry.event_id for retry in retries}
        dead = outcome.dead
        params = {
            "d": claim.destination,
            "owner": self.owner,
            "now": iso_now(),
            "done": _ids(row.first for row in claim.rows if row.first not in retried),
            "retry_ids": _ids(r.event_id for r in retries),
            "retry_attempts": [r.attempts for r in retries],
            "retry_due": [r.due_at for r in retries],
            "retry_errors": [r.error for r in retries],
            "retry_error": retries[-1].error if retries else None,
            "dead_ids": _ids(d.event_id for d in dead),
            "dead_attempts": [d.attempts for d in dead],
            "dead_errors": [d.error for d in dead],
            "filtered_ids": _ids(outcome.filtered_ids),
            "skipped_ids": _ids(outcome.skipped_ids),
        }
        held, kept = self._run(SETTLE, params)[0]
        with self._held_lock:
            self._held.pop(id(claim), None)
        lost = len(claim.rows) - int(held) - int(kept)
        if lost:
            logger.warning(
                "%s: %d claimed row(s) were taken over by another collector after this"
                " one's lease expired; they are delivered again (at least once)",
                claim.destination,
                lost,
            )

    def next_due(self, destination: str) -> Optional[float]:
        """When the earliest unleased row of ``destination`` falls due."""
        row = self._run(
            "SELECT MIN(due_at) FROM tracklane_outbox WHERE destination = %s"
            " AND lease_owner IS NULL",
            [destination],
        )[0]
        return None if row[0] is None else float(row[0])

    def status(self, destinations: Sequence[Tuple[str, str]]) -> List[DestinationStatus]:
        """The status of each ``(name, type)``, summed over every collector."""
        names = [name for name, _ in destinations]
        rows = self._run(
            "SELECT d.destination, d.delivered, d.filtered, d.skipped, d.last_error,"
            " d.last_error_at, d.last_delivered_at,"
            " (SELECT COUNT(*) FROM tracklane_outbox o WHERE o.destination = d.destination),"
            " (SELECT COUNT(*) FROM tracklane_outbox o WHERE o.destination = d.destination"
            "  AND o.attempts > 0),"
            " (SELECT COUNT(*) FROM tracklane_outbox_dead x WHERE x.destination = d.destination),"
            " (SELECT e.received_at FROM tracklane_events e WHERE e.id ="
            "  (SELECT MIN(o.event_id) FROM tracklane_outbox o"
            "   WHERE o.destination = d.destination))"
            " FROM tracklane_route_destinations d WHERE d.destination = ANY(%s)",
            [names],
        )
        found = {row[0]: row for row in rows}
        now = time.time()
        result: List[DestinationStatus] = []
        for name, kind in destinations:
            row = found.get(name, (name, 0, 0, 0, None, None, None, 0, 0, 0, None))
            lag = lag_seconds(row[10], now)
            result.append(
                DestinationStatus.from_counters(name, kind, row[1:7], row[7], row[8], row[9], lag)
            )
        return result

    def dead_letters(self, destination: str, limit: int = 100) -> List[DeadLetter]:
        """The newest dead letters of ``destination``, with each message's id and last error."""
        rows = self._run(
            "SELECT d.event_id, d.attempts, d.last_error, e.message_id, e.type, e.event,"
            " d.dead_at FROM tracklane_outbox_dead d LEFT JOIN tracklane_events e"
            " ON e.id = d.event_id WHERE d.destination = %s ORDER BY d.event_id DESC LIMIT %s",
            [destination, limit],
        )
        return [DeadLetter(int(r[0]), int(r[1]), *r[2:]) for r in rows]

    def replay(self, destination: str, now: Optional[float] = None) -> int:
        """Send every dead letter of ``destination`` again (due now); return how many."""
        now = time.time() if now is None else now
        rows = self._run(
            "WITH moved AS (DELETE FROM tracklane_outbox_dead WHERE destination = %s"
            " RETURNING destination, event_id)"
            " INSERT INTO tracklane_outbox (destination, event_id, due_at)"
            " SELECT destination, event_id, %s FROM moved"
            " ON CONFLICT (destination, event_id) DO NOTHING RETURNING event_id",
            [destination, now],
            durable=True,
        )
        return len(rows)

    def traces(self, event_ids: Sequence[int]) -> List[DeliveryTrace]:
        """Each destination's pending rows and dead letters among ``event_ids``.

        Rows are made by the insert trigger, so every stored event counts as claimed
        (``position`` is the largest id): an event without a row has been handled.
        """
        if not event_ids:
            return []
        wanted = list(event_ids)
        names = self._run(
            "SELECT destination, start_event FROM tracklane_route_destinations ORDER BY destination"
        )
        pending = self._run(
            "SELECT destination, event_id, event_id, attempts, due_at, last_error"
            " FROM tracklane_outbox WHERE event_id = ANY(%s)",
            [wanted],
        )
        dead = self._run(
            "SELECT destination, event_id, attempts, last_error FROM tracklane_outbox_dead"
            " WHERE event_id = ANY(%s)",
            [wanted],
        )
        cursors = [(row[0], 2**63 - 1, row[1]) for row in names]
        return build_traces(cursors, pending, dead, wanted)

    def _held_ids(self) -> Dict[str, str]:
        """The event ids of the claims not yet settled, per destination (array literals)."""
        with self._held_lock:
            claims = list(self._held.values())
        ids: Dict[str, List[int]] = {}
        for claim in claims:
            ids.setdefault(claim.destination, []).extend(row.first for row in claim.rows)
        return {destination: _ids(held) for destination, held in ids.items()}

    def _renew_leases(self) -> None:
        """Extend this collector's leases every third of a lease until closed."""
        while not self._closed.wait(self.lease_seconds / 3):
            for destination, ids in self._held_ids().items():
                try:
                    self._run(
                        "UPDATE tracklane_outbox SET lease_until = %s WHERE destination = %s"
                        " AND event_id = ANY(%s::bigint[]) AND lease_owner = %s",
                        [time.time() + self.lease_seconds, destination, ids, self.owner],
                    )
                except StorageError as exc:
                    if not self._closed.is_set():
                        logger.warning("renewing outbox leases failed: %s", exc)

    def close(self) -> None:
        """Release this collector's leases (others may claim the rows at once); idempotent."""
        if self._closed.is_set():
            return
        for destination, ids in self._held_ids().items():
            try:
                self._run(
                    "UPDATE tracklane_outbox SET lease_until = NULL, lease_owner = NULL"
                    " WHERE destination = %s AND event_id = ANY(%s::bigint[])"
                    " AND lease_owner = %s",
                    [destination, ids, self.owner],
                )
            except StorageError as exc:
                logger.warning("releasing outbox leases failed (they expire): %s", exc)
        self._closed.set()
        self._heartbeat.join(5.0)
        self._pool.close()

    def __repr__(self) -> str:
        return f"<PostgresOutbox {self.path!r} owner={self.owner!r}>"


def _configure(conn: Any) -> None:
    """Session settings of the outbox's connections.

    Claims and settlements commit without waiting for the WAL flush (see the module).
    The outbox fills and empties faster than autovacuum's statistics follow, and with a
    stale row estimate PostgreSQL read every due row of a destination (a bitmap scan) and
    sorted them for each claim: 16 ms per claim at 13,000 rows, growing with the backlog.
    Without bitmap scans a claim walks the due index in order and stops at its limit.
    """
    conn.execute("SET synchronous_commit TO off")
    conn.execute("SET enable_bitmapscan TO off")


def _ids(ids: Iterable[int]) -> str:
    """Event ids as a PostgreSQL array literal (cheaper than psycopg adapting a list)."""
    return "{" + ",".join(map(str, ids)) + "}"
