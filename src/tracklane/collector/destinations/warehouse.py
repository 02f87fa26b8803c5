"""The ``postgres`` destination: Segment's warehouse schema in a PostgreSQL database.

``PostgresWarehouse(dsn).load(source_name, messages)`` loads a batch of stored
messages into the schema of that source (``snake_case(source_name)``, or the
``schema`` setting) in one transaction: tables and columns are created as keys
appear, rows already loaded (by ``id``, the messageId) are skipped so that redelivery
never duplicates a row, ``users`` is upserted with the latest traits, and values that
do not fit their column go to ``tracklane_discards`` as text. A failure rolls the
whole batch back and raises :class:`WarehouseError`; loading it again is safe.

Needs the ``postgres`` extra (``pip install 'tracklane[postgres]'``); psycopg is
imported when the first warehouse is created.

Each table's rows are COPYed (text format) straight into it. ``users`` goes through a
temporary staging table (``LIKE`` the target, ``ON COMMIT DELETE ROWS``, created once per
connection and table) and one ``INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE``. Should
a row be there already (a redelivery, or another collector loading the same messages), the
COPY fails on the primary key, the batch is rolled back and loaded again through staging
tables with ``ON CONFLICT (id) DO NOTHING``, so redelivery adds nothing. Loads from several
threads run at once, each on its own connection (a session). Measured on the bench's
events (docs/performance.md).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from tracklane.collector._json import dumps, loads_stored
from tracklane.collector.destinations.warehouse_build import Built, BuiltTable, RowBuilders
from tracklane.collector.destinations.warehouse_rows import (
    DISCARDS_TABLE,
    FIXED_COLUMNS,
    KIND_TYPES,
    Discard,
    Rows,
    Table,
    build_rows,
    copy_rows,
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
        self,
        dsn: str,
        *,
        schema: Optional[str] = None,
        connect_timeout: float = 10.0,
        row_builders: int = 0,
    ) -> None:
        """Prepare a warehouse at ``dsn`` (connects on first load).

        ``schema`` names the schema for every source; ``{source}`` in it is replaced
        by the snake_cased source name (default: ``"{source}"``). With ``row_builders``
        above 0, :meth:`load_encoded` builds rows in that many worker processes.
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
        self._lock = threading.Lock()  # guards the pool of sessions
        self._idle: List[_Session] = []  # sessions not loading now, the last used last
        self._closed = False
        self._builders = RowBuilders(row_builders) if row_builders > 0 else None
        # schema -> the catalog a session last read or changed (replaced, never changed).
        self._catalog: Dict[str, Dict[str, Dict[str, str]]] = {}

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
        try:
            return self._load_rows(schema, build_rows(messages, now), len(messages), now)
        except WarehouseError as exc:
            if not _is_nul_error(exc):
                raise
        # PostgreSQL text cannot hold U+0000 (valid in JSON, so the collector stores it):
        # rather than fail the batch on every retry, load it with those characters left out.
        clean = [_without_nul(message) for message in messages]
        return self._load_rows(schema, build_rows(clean, now), len(messages), now)

    def load_encoded(self, source_name: str, bodies: Sequence[bytes]) -> LoadResult:
        """:meth:`load` for messages given as their stored JSON (UTF-8).

        With row builders, the rows are built in a worker process; where that fails, or
        the catalog changed meanwhile, they are built here as :meth:`load` does.
        """
        schema = self.schema_for(source_name)
        if self._builders is not None:
            now = datetime.now(timezone.utc)
            built = self._builders.build(bodies, now, self._catalog.get(schema, {}))
            if built is not None:
                try:
                    return self._load_rows(schema, built, len(bodies), now)
                except _Stale:
                    pass  # a column's type is not the one the worker fitted to
        return self.load(source_name, [loads_stored(body.decode("utf-8")) for body in bodies])

    def _load_rows(
        self, schema: str, rows: Union[Rows, Built], count: int, now: datetime
    ) -> LoadResult:
        """Load built rows in one transaction; through staging if a row appeared meanwhile."""
        session = self._take()
        try:
            try:
                return self._load_once(session, schema, rows, count, now, staged=False)
            except WarehouseError as exc:
                if not isinstance(exc.__cause__, _unique_violation()):
                    raise
            # A row appeared between the check and the COPY (another collector loading the
            # same messages, or rows deleted by hand from one table): load through staging.
            return self._load_once(session, schema, rows, count, now, staged=True)
        finally:
            self._give_back(session)

    def _take(self) -> _Session:
        """An idle session (the one used last), or a new one: one per concurrent load."""
        with self._lock:
            if self._closed:
                raise WarehouseError("the warehouse is closed")
            return self._idle.pop() if self._idle else _Session()

    def _give_back(self, session: _Session) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(session)
                return
        session.close()

    def _load_once(
        self,
        session: _Session,
        schema: str,
        rows: Union[Rows, Built],
        count: int,
        now: datetime,
        *,
        staged: bool,
    ) -> LoadResult:
        try:
            conn = self._connection(session)
            with conn.transaction():
                new, discarded = self._load(session, schema, rows, now, staged=staged)
            return LoadResult(messages=count, new=new, discarded_values=discarded)
        except Exception as exc:
            session.columns.pop(schema, None)  # DDL may have been rolled back
            session.stages.clear()  # so may a staging table's creation
            if session.conn is not None and session.conn.broken:
                session.conn = None
            if isinstance(exc, (WarehouseError, _Stale)):
                raise
            raise WarehouseError(f"loading {count} messages into {schema}: {exc}") from exc

    def _connection(self, session: _Session) -> psycopg.Connection[Any]:
        import psycopg

        if session.conn is None or session.conn.closed:
            session.stages.clear()  # temporary tables live and die with their session
            try:
                session.conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
                )
            except psycopg.Error as exc:
                raise WarehouseError(f"cannot connect to the warehouse: {exc}") from exc
        return session.conn

    def _load(
        self,
        session: _Session,
        schema: str,
        rows: Union[Rows, Built],
        now: datetime,
        *,
        staged: bool,
    ) -> Tuple[int, int]:
        """COPY each table's rows straight into it (``staged``: through staging tables).

        A row already loaded makes the COPY fail on the primary key (a redelivery): the
        caller then rolls back and loads through staging, skipping what is there.
        ``users`` always goes through staging to be upserted.
        """
        conn = session.conn
        assert conn is not None
        columns = self._ensure_columns(session, schema, rows)
        discards: List[Discard] = list(rows.discards)
        new = 0
        with conn.cursor() as cursor:
            for name, table in rows.tables.items():
                if isinstance(table, BuiltTable):
                    assert isinstance(rows, Built)
                    if not rows.fits(name, columns[name]):
                        raise _Stale(name)
                    names, data, dropped = table.names, table.data, table.discards
                else:
                    names, data, dropped = copy_rows(table, columns[name])
                discards.extend(dropped)
                if staged or name == "users":
                    stage = self._stage(session, cursor, schema, name, names)
                    _copy(cursor, stage, names, data)
                    if name == "users":
                        cursor.execute(self._upsert_users_sql(schema, stage, names))
                        continue
                    cursor.execute(self._insert_sql(schema, name, stage, names))
                    if name in _PRIMARY:
                        new += max(cursor.rowcount, 0)
                    continue
                _copy(cursor, f"{_quote(schema)}.{_quote(name)}", names, data)
                if name in _PRIMARY:
                    new += data.count("\n")  # a line per row (a newline in a value is escaped)
        return new, self._insert_discards(conn, schema, discards, now)

    @staticmethod
    def _stage(
        session: _Session,
        cursor: psycopg.Cursor[Any],
        schema: str,
        table: str,
        names: Sequence[str],
    ) -> str:
        """This session's staging table for ``schema.table`` with (at least) ``names``.

        Created ``LIKE`` the target (same column types, no constraints or indexes) and
        emptied at each commit; recreated when the target gained a column since.
        """
        key = (schema, table)
        found = session.stages.get(key)
        if found is not None and found[1].issuperset(names):
            return found[0]
        stage = found[0] if found is not None else _quote(f"tracklane_stage_{len(session.stages)}")
        target = f"{_quote(schema)}.{_quote(table)}"
        cursor.execute(f"DROP TABLE IF EXISTS pg_temp.{stage}")
        cursor.execute(f"CREATE TEMPORARY TABLE {stage} (LIKE {target}) ON COMMIT DELETE ROWS")
        known = session.columns.get(schema, {}).get(table, {})
        session.stages[key] = (stage, frozenset(known).union(names))
        return stage

    @staticmethod
    def _insert_sql(schema: str, table: str, stage: str, names: Sequence[str]) -> str:
        quoted = _names(names)
        return (
            f"INSERT INTO {_quote(schema)}.{_quote(table)} ({quoted}) SELECT {quoted}"
            f" FROM {stage} ORDER BY id ON CONFLICT (id) DO NOTHING"
        )

    @staticmethod
    def _upsert_users_sql(schema: str, stage: str, names: Sequence[str]) -> str:
        """Insert new users; for known ones keep the latest value of each trait."""
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
        quoted = _names(names)
        return (
            f"INSERT INTO {_quote(schema)}.{_quote('users')} AS u ({quoted}) SELECT {quoted}"
            f" FROM {stage} ORDER BY id ON CONFLICT (id) DO UPDATE SET {', '.join(updates)}"
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
        self, session: _Session, schema: str, rows: Union[Rows, Built]
    ) -> Dict[str, Dict[str, str]]:
        """Create what the batch needs (schema, tables, columns); return every column's type.

        DDL runs under a transaction-scoped advisory lock per schema, and the catalog is
        read again under it, so collectors loading at once agree on each column's type.
        """
        conn = session.conn
        assert conn is not None
        known = session.columns.get(schema)
        if known is None:
            known = session.columns[schema] = self._read_columns(conn, schema)
            self._catalog[schema] = _copy_catalog(known)
        if not _missing(known, rows):
            return known
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tracklane.warehouse'), hashtext(%s))", [schema]
        )
        known = session.columns[schema] = self._read_columns(conn, schema)
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        wanted: Dict[str, Union[Table, BuiltTable]] = dict(rows.tables)
        if DISCARDS_TABLE not in known:
            self._create_table(conn, schema, DISCARDS_TABLE, _DISCARD_COLUMNS, known)
        # A new table is created with every column the batch gives it, and a table that
        # lacks some gets them in one ALTER TABLE: a statement per column was 91 for the
        # bench's first load, whose DDL took 150-180 ms instead of 104-114 (performance.md).
        for name, table in wanted.items():
            existing = known.get(name)
            fixed = FIXED_COLUMNS.get(name, FIXED_COLUMNS["tracks"])
            added = {
                column: KIND_TYPES[kind]
                for column, kind in table.kinds.items()
                if column not in (fixed if existing is None else existing)
            }
            if existing is None:
                self._create_table(conn, schema, name, {**fixed, **added}, known)
            elif added:
                conn.execute(
                    f"ALTER TABLE {_quote(schema)}.{_quote(name)} "
                    + ", ".join(
                        f"ADD COLUMN IF NOT EXISTS {_quote(column)} {column_type}"
                        for column, column_type in added.items()
                    )
                )
                existing.update(added)
        self._catalog[schema] = _copy_catalog(known)
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
            # BRIN: PostgreSQL's form of a sort key (a min/max per range of pages), for the
            # append-mostly received_at; a B-tree cost 12% more WAL per event (performance.md).
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {target}"
                " USING brin (received_at) WITH (autosummarize = on)"
            )
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
        """Close the idle sessions (a load under way closes its own when done) and stop the
        row builders; idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()
        if self._builders is not None:
            self._builders.close()


class _Session:
    """One connection to the warehouse and what it knows: one per concurrent load.

    Each session keeps its own catalog cache and temporary staging tables, as two
    collectors would; DDL is serialized by the schema's advisory lock either way.
    """

    def __init__(self) -> None:
        self.conn: Optional[psycopg.Connection[Any]] = None
        # schema -> table -> column -> PostgreSQL type, as last read or created.
        self.columns: Dict[str, Dict[str, Dict[str, str]]] = {}
        # (schema, table) -> this connection's staging table and the columns it has.
        self.stages: Dict[Tuple[str, str], Tuple[str, FrozenSet[str]]] = {}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _Stale(Exception):
    """A worker fitted a table's values to column types the catalog no longer has."""


def _copy_catalog(known: Mapping[str, Mapping[str, str]]) -> Dict[str, Dict[str, str]]:
    return {table: dict(columns) for table, columns in known.items()}


def _missing(known: Mapping[str, Mapping[str, str]], rows: Union[Rows, Built]) -> bool:
    if DISCARDS_TABLE not in known:
        return True
    for name, table in rows.tables.items():
        columns = known.get(name)
        if columns is None or any(column not in columns for column in table.kinds):
            return True
    return False


def _copy(cursor: psycopg.Cursor[Any], target: str, names: Sequence[str], data: str) -> None:
    """COPY rows given as COPY text data (columns in the order of ``names``) into ``target``."""
    with cursor.copy(f"COPY {target} ({_names(names)}) FROM STDIN") as copy:
        copy.write(data.encode("utf-8"))


def _unique_violation() -> type:
    from psycopg.errors import UniqueViolation

    return UniqueViolation


def _names(columns: Iterable[str]) -> str:
    return ", ".join(_quote(column) for column in columns)


def _json(value: Any) -> str:
    return dumps(value).decode("utf-8")


def _is_nul_error(exc: WarehouseError) -> bool:
    """Whether PostgreSQL (or psycopg) refused text for holding a NUL character."""
    cause = exc.__cause__
    text = str(cause) if cause is not None else ""
    return "NUL" in text or "\\u0000" in text or "Unicode escape sequence" in text


def _without_nul(value: Any) -> Any:
    """``value`` with every U+0000 left out of its strings and keys (a copy)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, Mapping):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(item) for item in value]
    return value
