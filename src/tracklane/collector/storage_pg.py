"""PostgreSQL storage for the collector (``--db postgresql://...``), shared by collectors.

The same behaviour as the SQLite :class:`~tracklane.collector.storage.Storage`: a
``tracklane_events`` table with (write key, messageId) unique, so a retried or
redelivered message is stored once whichever collector receives it; an insert
returns only after its transaction committed (PostgreSQL's ``synchronous_commit``
decides the durability, on by default). Each event's ``seq`` is the table's identity
``id``; inserts are serialised by a transaction-level advisory lock taken just before the
identity values are drawn, so seq order is commit order even with several collectors
writing, and a reader following ``after=<seq>`` never skips a row committed late with a
lower seq (the cost: commits to one database do not overlap; ``bench/pg_insert_order.py``).
Connections come from a small pool (psycopg-pool); a broken connection (a server
restart) is replaced, the request in flight answers 503 and the client's retry succeeds.

Needs the ``postgres`` extra (``pip install 'tracklane[postgres]'``).
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple, Type

import orjson

from tracklane.collector.storage import EventFilter, EventRow, StorageError, StoredMessage

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["PostgresStorage"]

INSTALL_HINT = "pip install 'tracklane[postgres]'"
SCHEMA_VERSION = 1
_COLUMNS = (
    "write_key",
    "message_id",
    "type",
    "user_id",
    "anonymous_id",
    "event",
    "received_at",
    "timestamp",
    "original_timestamp",
    "body",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracklane_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    write_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    user_id TEXT,
    anonymous_id TEXT,
    event TEXT,
    received_at TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    original_timestamp TEXT,
    body TEXT NOT NULL,
    UNIQUE (write_key, message_id)
);
DROP INDEX IF EXISTS tracklane_events_user_id;
DROP INDEX IF EXISTS tracklane_events_anonymous_id;
COMMENT ON TABLE tracklane_events IS 'tracklane collector events, schema version 1';
"""
# No index by userId or anonymousId, as in the SQLite store: each costs a random index page
# per stored event (docs/performance.md); reads filtered by user scan from the newest event.
#
# One statement and one parameter per request: the rows as one JSON array (one orjson call),
# read by json_to_recordset in array order, so ids rise in the order messages arrived, as the
# read API's newest-first needs. Measured against unnest() of one array per column: psycopg
# builds text arrays in Python (3,250 rows/s for 100-row inserts, 4,000-4,900 as binary
# arrays), the JSON array 5,250-5,400 rows/s (a loaded 2-core machine, no fsync).
#
# Identity values are drawn when rows are inserted but become visible at commit, so with
# concurrent inserts a reader at ``after=<seq>`` could see seq 12 committed while seq 11 is
# still in flight, move its cursor to 12 and never see 11. The materialised CTE takes a
# transaction-level advisory lock before any row (and so any identity value) is produced;
# the statement runs in its own transaction (autocommit), which keeps the lock until after
# its commit is visible. Inserts from every collector on the database thus draw ids and
# commit one at a time, in the same order. (The other way, handing out only rows below the
# oldest running transaction via pg_snapshot_xmin, lets any long transaction on the server,
# a warehouse load or a backup, hold the live page back; see docs/collector.md.)
INSERT_LOCK_KEY = "tracklane.collector.events.insert"
_INSERT = (
    "WITH serialised AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtext(%s)))"
    f" INSERT INTO tracklane_events ({', '.join(_COLUMNS)})"
    f" SELECT {', '.join('r.' + c for c in _COLUMNS)}"
    " FROM serialised, json_to_recordset(%s::json)"
    f" AS r({', '.join(c + ' text' for c in _COLUMNS)})"
    " ON CONFLICT (write_key, message_id) DO NOTHING"
)
_PASSWORD = re.compile(r"(://[^:/@]*):[^@/]*@")


def _redacted(dsn: str) -> str:
    return _PASSWORD.sub(r"\1:***@", dsn)


class PostgresStorage:
    """The collector's event store in a PostgreSQL database (``tracklane_events``)."""

    def __init__(
        self, dsn: str, *, max_connections: int = 8, connect_timeout: float = 10.0
    ) -> None:
        """Connect to ``dsn`` and create the table if needed; raises StorageError."""
        try:
            import psycopg
            from psycopg_pool import ConnectionPool, PoolTimeout
        except ImportError as exc:
            raise StorageError(
                f"--db postgresql:// needs the postgres extra ({exc.name} is missing): "
                f"{INSTALL_HINT}"
            ) from None
        self.path = _redacted(dsn)
        self.dsn = dsn  # for the ingest worker processes (``--workers``), which connect too
        self._closed = False
        self._close_lock = threading.Lock()
        self._errors: Tuple[Type[BaseException], ...] = (psycopg.Error, PoolTimeout)
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout))},
            timeout=connect_timeout,
            open=False,
            name="tracklane-collector",
        )
        try:
            self._init_schema(dsn, connect_timeout)
            self._pool.open(wait=True, timeout=connect_timeout)
        except self._errors as exc:
            self._pool.close()
            raise StorageError(f"cannot use {self.path}: {_reason(exc)}") from exc
        except BaseException:
            self._pool.close()
            raise

    @staticmethod
    def _init_schema(dsn: str, connect_timeout: float) -> None:
        """Connect once directly (a bad URL fails at once, not after the pool's timeout)."""
        import psycopg

        timeout = max(1, round(connect_timeout))
        with psycopg.connect(dsn, connect_timeout=timeout) as conn, conn.transaction():
            # Collectors starting together would race on CREATE TABLE IF NOT EXISTS.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('tracklane.collector.schema'))")
            conn.execute(_SCHEMA)

    def insert(self, messages: Sequence[StoredMessage]) -> int:
        """Store ``messages`` in one transaction; return how many were new."""
        if not messages:
            return 0
        payload = orjson.dumps([dict(zip(_COLUMNS, m.as_row())) for m in messages]).decode()
        self._check_open()
        try:
            with self._pool.connection() as conn:
                cursor = conn.execute(_INSERT, [INSERT_LOCK_KEY, payload])
                return int(max(cursor.rowcount, 0))
        except self._errors as exc:
            raise StorageError(f"insert into {self.path} failed: {_reason(exc)}") from exc

    def query(self, where: EventFilter, limit: int) -> List[Dict[str, Any]]:
        """Return up to ``limit`` matching events as served by the read API (with ``seq``).

        Newest first, or oldest first when ``where.after`` is set (see EventFilter).
        """
        return [row.to_event() for row in self.rows(where, limit)]

    def rows(self, where: EventFilter, limit: int) -> List[EventRow]:
        """Return up to ``limit`` matching rows, ordered as :meth:`query` orders them."""
        clause, params = _where(where)
        order = "ASC" if where.after is not None else "DESC"
        sql = (
            "SELECT id, write_key, received_at, timestamp, original_timestamp, body"
            f" FROM tracklane_events{clause} ORDER BY id {order} LIMIT %s"
        )
        return [EventRow(*row) for row in self._read(sql, [*params, limit])]

    def count(self, where: EventFilter) -> int:
        """Return how many stored events match ``where``."""
        clause, params = _where(where)
        rows = self._read(f"SELECT count(*) FROM tracklane_events{clause}", params)
        return int(rows[0][0])

    def _read(self, sql: str, params: List[Any]) -> List[Tuple[Any, ...]]:
        self._check_open()
        try:
            with self._pool.connection() as conn:
                return list(conn.execute(sql, params))
        except self._errors as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")

    def close(self) -> None:
        """Close every connection; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    def __repr__(self) -> str:
        return f"<PostgresStorage {self.path!r}>"


def _where(where: EventFilter) -> Tuple[str, List[Any]]:
    """The filter as a ``WHERE`` clause with psycopg placeholders, and its parameters.

    The same semantics as SQLite's :meth:`EventFilter.where`. A text value holding NUL
    matches nothing (PostgreSQL text cannot hold one, and no stored value has one).
    """
    clauses: List[str] = []
    params: List[Any] = []

    def add(clause: str, *values: Any) -> None:
        if any(isinstance(value, str) and "\x00" in value for value in values):
            clause = "FALSE"
            values = ()
        clauses.append(clause)
        params.extend(values)

    for column, value in (
        ("write_key", where.write_key),
        ("type", where.type),
        ("user_id", where.user_id),
        ("anonymous_id", where.anonymous_id),
        ("event", where.event),
    ):
        if value is not None:
            add(f"{column} = %s", value)
    if where.since is not None:  # the same fixed-width ISO text as SQLite, so text order works
        add('received_at COLLATE "C" >= %s', where.since)
    if where.after is not None:
        add("id > %s", where.after)
    if where.before is not None:
        add("id < %s", where.before)
    if where.user is not None:
        add("(user_id = %s OR anonymous_id = %s)", where.user, where.user)
    if where.text is not None:
        # Under the "C" collation ILIKE folds ASCII letters only, as SQLite's LIKE does.
        add("body COLLATE \"C\" ILIKE %s ESCAPE '\\'", f"%{_like_escape(where.text)}%")
    if where.write_key_prefix is not None:
        add("starts_with(write_key, %s)", where.write_key_prefix)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
