"""The ``postgres`` destination: Segment's warehouse schema in a PostgreSQL database.

``PostgresWarehouse(dsn).load(source_name, messages)`` loads a batch of stored
messages into the schema of that source (``snake_case(source_name)``, or the
``schema`` setting) in one transaction: tables and columns are created as keys
appear, rows are inserted with ``ON CONFLICT (id) DO NOTHING`` so that redelivery
never duplicates a row, ``users`` is upserted with the latest traits, and values that
do not fit their column go to ``tracklane_discards`` as text. A failure rolls the
whole batch back and raises :class:`WarehouseError`; loading it again is safe.

Needs the ``postgres`` extra (``pip install 'tracklane[postgres]'``); psycopg is
imported when the first warehouse is created.

Each table's rows go in as one ``INSERT ... SELECT FROM json_populate_recordset(...)``:
one statement and one parameter per table whatever the number of columns (``unnest``
of per-column arrays stops at PostgreSQL's 100 function arguments, and COPY cannot
skip rows already loaded without a temporary table per table and batch).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence

from tracklane.collector._json import dumps
from tracklane.collector.destinations.warehouse_rows import (
    DISCARDS_TABLE,
    FIXED_COLUMNS,
    KIND_TYPES,
    Discard,
    Rows,
    build_rows,
    fit_rows,
    snake_case,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["LoadResult", "PostgresWarehouse", "WarehouseError"]

INSTALL_HINT = "pip install 'tracklane[postgres]'"
_PRIMARY = frozenset({"tracks", "identifies", "pages", "screens", "groups", "aliases"})
_DISCARD_COLUMNS = {
    "table_name": "text",
    "row_id": "text",
    "column_name": "text",
    "column_value": "text",
    "reason": "text",
    "received_at": "timestamp with time zone",
    "uuid_ts": "timestamp with time zone",
}
_CONFIG_KEYS = ("dsn", "schema", "connect_timeout")


class WarehouseError(Exception):
    """A batch could not be loaded; nothing of it was committed (safe to retry)."""


@dataclass(frozen=True)
class LoadResult:
    """What one ``load`` did."""

    messages: int  # messages in the batch
    new: int  # messages not loaded before (rows new in their type's table)
    discarded_values: int  # values written to tracklane_discards (new ones)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresWarehouse:
    """Loads batches of Segment messages into PostgreSQL, one schema per source."""

    def __init__(
        self, dsn: str, *, schema: Optional[str] = None, connect_timeout: float = 10.0
    ) -> None:
        """Prepare a warehouse at ``dsn`` (connects on first load).

        ``schema`` names the schema for every source; ``{source}`` in it is replaced
        by the snake_cased source name (default: ``"{source}"``).
        """
        if not isinstance(dsn, str) or not dsn.strip():
            raise ValueError("postgres destination: 'dsn' must be a non-empty string")
        if schema is not None and (not isinstance(schema, str) or not schema.strip()):
            raise ValueError("postgres destination: 'schema' must be a non-empty string")
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"the postgres destination needs psycopg: {INSTALL_HINT}") from exc
        self.dsn = dsn
        self.schema_template = schema or "{source}"
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: Optional[psycopg.Connection[Any]] = None
        # schema -> table -> column -> PostgreSQL type, as last read or created.
        self._columns: Dict[str, Dict[str, Dict[str, str]]] = {}
        self._closed = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PostgresWarehouse:
        """Build from a destination config table (``dsn``, optional ``schema``, ...)."""
        unknown = sorted(set(config) - {*_CONFIG_KEYS, "name", "type", "sources"})
        if unknown:
            raise ValueError(f"postgres destination: unknown key {unknown[0]!r}")
        if "dsn" not in config:
            raise ValueError("postgres destination: missing 'dsn'")
        timeout = config.get("connect_timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("postgres destination: 'connect_timeout' must be a positive number")
        return cls(config["dsn"], schema=config.get("schema"), connect_timeout=float(timeout))

    def schema_for(self, source_name: str) -> str:
        """The schema a source's events go to."""
        source = snake_case(source_name)
        if not source:
            raise WarehouseError(f"source name {source_name!r} gives no schema name")
        return self.schema_template.replace("{source}", source)

    def load(self, source_name: str, messages: Sequence[Mapping[str, Any]]) -> LoadResult:
        """Load ``messages`` (stored wire-form dicts) in one transaction.

        Raises WarehouseError (with the cause) when the batch cannot be loaded; then
        nothing of it is committed and the same batch may be loaded again.
        """
        schema = self.schema_for(source_name)
        now = datetime.now(timezone.utc)
        rows = build_rows(messages, now)
        with self._lock:
            if self._closed:
                raise WarehouseError("the warehouse is closed")
            try:
                conn = self._connection()
                with conn.transaction():
                    return self._load(conn, schema, rows, len(messages), now)
            except Exception as exc:
                self._columns.pop(schema, None)  # DDL may have been rolled back
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                if isinstance(exc, WarehouseError):
                    raise
                raise WarehouseError(
                    f"loading {len(messages)} messages into {schema}: {exc}"
                ) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
                )
            except psycopg.Error as exc:
                raise WarehouseError(f"cannot connect to the warehouse: {exc}") from exc
        return self._conn

    def _load(
        self, conn: psycopg.Connection[Any], schema: str, rows: Rows, count: int, now: datetime
    ) -> LoadResult:
        columns = self._ensure_columns(conn, schema, rows)
        discards: List[Discard] = list(rows.discards)
        new = 0
        for name, table in rows.tables.items():
            fitted, dropped = fit_rows(table, columns[name])
            discards.extend(dropped)
            if name == "users":
                self._upsert_users(conn, schema, fitted)
                continue
            cursor = conn.execute(self._insert_sql(schema, name, fitted), [_json(fitted)])
            if name in _PRIMARY:
                new += max(cursor.rowcount, 0)
        discarded = self._insert_discards(conn, schema, discards, now)
        return LoadResult(messages=count, new=new, discarded_values=discarded)

    @staticmethod
    def _insert_sql(schema: str, table: str, fitted: List[Dict[str, Any]]) -> str:
        names = ", ".join(_quote(c) for c in _column_names(fitted))
        target = f"{_quote(schema)}.{_quote(table)}"
        return (
            f"INSERT INTO {target} ({names}) SELECT {names}"
            f" FROM json_populate_recordset(NULL::{target}, %s::json) ON CONFLICT (id) DO NOTHING"
        )

    def _upsert_users(
        self, conn: psycopg.Connection[Any], schema: str, fitted: List[Dict[str, Any]]
    ) -> None:
        """Insert new users; for known ones keep the latest value of each trait."""
        target = f"{_quote(schema)}.{_quote('users')}"
        names = _column_names(fitted)
        updates = []
        for column in names:
            if column in ("id", "received_at"):
                continue
            c = _quote(column)
            updates.append(
                f"{c} = CASE WHEN EXCLUDED.received_at >= u.received_at OR u.received_at IS NULL"
                f" THEN COALESCE(EXCLUDED.{c}, u.{c}) ELSE COALESCE(u.{c}, EXCLUDED.{c}) END"
            )
        updates.append("received_at = GREATEST(u.received_at, EXCLUDED.received_at)")
        quoted = ", ".join(_quote(c) for c in names)
        conn.execute(
            f"INSERT INTO {target} AS u ({quoted}) SELECT {quoted}"
            f" FROM json_populate_recordset(NULL::{target}, %s::json)"
            f" ON CONFLICT (id) DO UPDATE SET {', '.join(updates)}",
            [_json(fitted)],
        )

    def _insert_discards(
        self, conn: psycopg.Connection[Any], schema: str, discards: List[Discard], now: datetime
    ) -> int:
        if not discards:
            return 0
        records = [
            {
                "table_name": d.table,
                "row_id": d.row_id,
                "column_name": d.column,
                "column_value": d.value,
                "reason": d.reason,
                "received_at": d.received_at.isoformat() if d.received_at else None,
                "uuid_ts": now.isoformat(),
            }
            for d in discards
        ]
        target = f"{_quote(schema)}.{_quote(DISCARDS_TABLE)}"
        names = ", ".join(_DISCARD_COLUMNS)
        cursor = conn.execute(
            f"INSERT INTO {target} ({names}) SELECT {names}"
            f" FROM json_populate_recordset(NULL::{target}, %s::json) ON CONFLICT DO NOTHING",
            [_json(records)],
        )
        return max(cursor.rowcount, 0)

    def _ensure_columns(
        self, conn: psycopg.Connection[Any], schema: str, rows: Rows
    ) -> Dict[str, Dict[str, str]]:
        """Create what the batch needs (schema, tables, columns); return every column's type.

        DDL runs under a transaction-scoped advisory lock per schema, and the catalog is
        read again under it, so collectors loading at once agree on each column's type.
        """
        known = self._columns.get(schema)
        if known is None:
            known = self._columns[schema] = self._read_columns(conn, schema)
        if not _missing(known, rows):
            return known
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tracklane.warehouse'), hashtext(%s))", [schema]
        )
        known = self._columns[schema] = self._read_columns(conn, schema)
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        wanted = dict(rows.tables)
        if DISCARDS_TABLE not in known:
            self._create_table(conn, schema, DISCARDS_TABLE, _DISCARD_COLUMNS, known)
        for name, table in wanted.items():
            if name not in known:
                self._create_table(
                    conn, schema, name, FIXED_COLUMNS.get(name, FIXED_COLUMNS["tracks"]), known
                )
            existing = known[name]
            for column, kind in table.kinds.items():
                if column not in existing:
                    column_type = KIND_TYPES[kind]
                    conn.execute(
                        f"ALTER TABLE {_quote(schema)}.{_quote(name)}"
                        f" ADD COLUMN IF NOT EXISTS {_quote(column)} {column_type}"
                    )
                    existing[column] = column_type
        return known

    @staticmethod
    def _create_table(
        conn: psycopg.Connection[Any],
        schema: str,
        name: str,
        columns: Mapping[str, str],
        known: Dict[str, Dict[str, str]],
    ) -> None:
        definitions = [f"{_quote(c)} {t}" for c, t in columns.items()]
        if name == DISCARDS_TABLE:
            definitions.append("PRIMARY KEY (table_name, row_id, column_name)")
        else:
            definitions[0] += " PRIMARY KEY"
            definitions[1:] = [
                d + (" DEFAULT now()" if d.startswith('"uuid_ts"') else "") for d in definitions[1:]
            ]
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(schema)}.{_quote(name)} ({', '.join(definitions)})"
        )
        if "received_at" in columns and name != DISCARDS_TABLE:
            index = _quote(snake_case(f"{name}_received_at_idx") or "received_at_idx")
            target = f"{_quote(schema)}.{_quote(name)}"
            conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {target} (received_at)")
        known[name] = dict(columns)

    @staticmethod
    def _read_columns(conn: psycopg.Connection[Any], schema: str) -> Dict[str, Dict[str, str]]:
        found: Dict[str, Dict[str, str]] = {}
        for table, column, data_type in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY table_name, ordinal_position",
            [schema],
        ):
            found.setdefault(table, {})[column] = data_type
        return found

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _missing(known: Mapping[str, Mapping[str, str]], rows: Rows) -> bool:
    if DISCARDS_TABLE not in known:
        return True
    for name, table in rows.tables.items():
        columns = known.get(name)
        if columns is None or any(column not in columns for column in table.kinds):
            return True
    return False


def _column_names(fitted: Iterable[Mapping[str, Any]]) -> List[str]:
    names: Dict[str, None] = {}
    for row in fitted:
        names.update(dict.fromkeys(row))
    return list(names)


def _json(value: Any) -> str:
    return dumps(value).decode("utf-8")
