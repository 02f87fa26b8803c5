"""Segment's warehouse schema as rows (pure: no database, no I/O).

Turns stored Segment messages into rows for the tables of Segment's documented
warehouse schema (the same as RudderStack's): ``tracks`` plus one table per event
name, ``identifies``, ``users``, ``pages``, ``screens``, ``groups`` and ``aliases``.
Names are snake_cased; ``context`` is flattened into ``context_*`` columns; traits
and properties become columns (nested objects flattened with ``_``, arrays stored as
JSON text); a null never creates a column.

Types are inferred per value (:func:`kind_of`) and a value is fitted to the type its
column already has (:func:`fit`); what cannot be fitted, or has no usable column,
becomes a :class:`Discard` (kept as text, never dropped silently).
"""

from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from tracklane._iso import parse_iso
from tracklane.collector._json import dumps

__all__ = [
    "DISCARDS_TABLE",
    "KIND_TYPES",
    "Discard",
    "Moment",
    "Rows",
    "Table",
    "build_rows",
    "copy_rows",
    "fit",
    "kind_of",
    "snake_case",
    "timestamp_text",
]

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1
DISCARDS_TABLE = "tracklane_discards"
# The PostgreSQL type a new column gets for each inferred kind of value.
KIND_TYPES = {
    "boolean": "boolean",
    "int": "bigint",
    "float": "double precision",
    "datetime": "timestamp with time zone",
    "string": "text",
}
_COMMON = {
    "id": "text",
    "anonymous_id": "text",
    "user_id": "text",
    "received_at": "timestamp with time zone",
    "sent_at": "timestamp with time zone",
    "timestamp": "timestamp with time zone",
    "original_timestamp": "timestamp with time zone",
    "uuid_ts": "timestamp with time zone",
}
_TRACK = {**_COMMON, "event": "text", "event_text": "text"}
# The columns every table is created with (and the types values are fitted to).
FIXED_COLUMNS: Dict[str, Dict[str, str]] = {
    "tracks": _TRACK,
    "identifies": dict(_COMMON),
    "pages": {**_COMMON, "name": "text"},
    "screens": {**_COMMON, "name": "text"},
    "groups": {**_COMMON, "group_id": "text"},
    "aliases": {**_COMMON, "previous_id": "text"},
    "users": {
        "id": "text",
        "received_at": "timestamp with time zone",
        "uuid_ts": "timestamp with time zone",
    },
}
RESERVED_TABLES = frozenset({*FIXED_COLUMNS, DISCARDS_TABLE})
# Traits and properties never overwrite these (Segment drops such properties; we keep them
# as discards).
_RESERVED_COLUMNS = frozenset({*_TRACK, "group_id", "previous_id"})
_TABLE_OF_TYPE = {
    "identify": "identifies",
    "page": "pages",
    "screen": "screens",
    "group": "groups",
    "alias": "aliases",
    "track": "tracks",
}
# A date and a time (seconds optional), with an optional UTC offset: typed as a timestamp.
_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NOT_WORD = re.compile(r"[^\w]+")
_UNDERSCORES = re.compile(r"_+")


class Moment(str):
    """A string that reads as a date-time, stored as a timestamp or as its text.

    Its own (str) value is ``at`` as PostgreSQL reads it (:func:`timestamp_text`), so that
    COPY text takes it as it is; ``text`` is the string as sent.
    """

    text: str  # as sent
    at: datetime  # aware

    def __new__(cls, text: str, at: datetime) -> Moment:
        moment = super().__new__(cls, timestamp_text(at))
        moment.text = text
        moment.at = at
        return moment

    @classmethod
    def of(cls, text: str, at: datetime) -> Moment:
        return cls(text, at)

    @property
    def iso(self) -> str:
        """``at`` in ISO-8601 with its offset (a plain str)."""
        return str.__str__(self)


Value = Union[bool, int, float, str, Moment]


def timestamp_text(at: datetime) -> str:
    """``at`` (aware) as ISO-8601 in the form PostgreSQL parses fastest, the same instant.

    A space, not ``T``; no trailing zeros in the fraction; ``+00`` for UTC: about 20% less
    of PostgreSQL's CPU per timestamp than ``isoformat()``'s form, and each track row holds
    five (docs/performance.md). ``2024-05-01 10:00:00.5+00``, ``2024-05-01 12:00:00+02:00``.
    """
    text = at.isoformat(" ")
    if not text.endswith("+00:00"):
        return text
    text = text[:-6]
    if at.microsecond:
        text = text.rstrip("0")
    return text + "+00"


@dataclass(frozen=True)
class Discard:
    """A value kept out of its row (type conflict, reserved or unusable name), as text."""

    table: str
    row_id: str
    column: str
    value: str
    reason: str
    received_at: Optional[datetime]


@dataclass
class Table:
    """The rows of one table in one batch, and the kind first seen for each column."""

    name: str
    rows: List[Dict[str, Value]] = field(default_factory=list)
    kinds: Dict[str, str] = field(default_factory=dict)
    _ints: Set[str] = field(default_factory=set, repr=False)  # columns of kind "int" so far

    def add(self, row: Dict[str, Value]) -> None:
        self.rows.append(row)
        kinds = self.kinds
        if kinds.keys() >= row.keys() and not self._ints:  # the usual row: nothing new
            return
        for column, value in row.items():
            seen = kinds.get(column)
            if seen is None:
                kind = kinds[column] = kind_of(value)
                if kind == "int":
                    self._ints.add(column)
            elif seen == "int" and type(value) is float:  # a numeric column not all ints
                kinds[column] = "float"
                self._ints.discard(column)


@dataclass
class Rows:
    """A batch of messages as rows: per table, plus values discarded on the way."""

    tables: Dict[str, Table] = field(default_factory=dict)
    discards: List[Discard] = field(default_factory=list)

    def table(self, name: str) -> Table:
        found = self.tables.get(name)
        if found is None:
            found = self.tables[name] = Table(name)
        return found


@functools.lru_cache(maxsize=16_384)  # the same keys come in every message
def snake_case(name: str) -> str:
    """Segment's column/table naming: ``accountType`` -> ``account_type``, at most 63 bytes.

    Letters and digits are kept (lower-cased), everything else becomes one ``_``; a
    leading digit gets a ``_`` prefix. Returns ``""`` when nothing usable is left.
    """
    text = _CAMEL.sub(r"\1_\2", _ACRONYM.sub(r"\1_\2", name))
    text = _UNDERSCORES.sub("_", _NOT_WORD.sub("_", text)).strip("_").lower()
    if text[:1].isdigit():
        text = "_" + text
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_IDENTIFIER_BYTES:
        text = encoded[:MAX_IDENTIFIER_BYTES].decode("utf-8", "ignore").rstrip("_")
    return text


def kind_of(value: Value) -> str:
    """The kind of a normalized value: boolean, int, float, datetime or string."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, Moment):
        return "datetime"
    return "string"


def _normalize(value: Any) -> Optional[Value]:
    """A JSON leaf as a column value; arrays become JSON text, date-times Moments."""
    if type(value) is str:  # the most common leaf first
        if len(value) >= 16 and value[4:5] == "-" and _DATETIME.fullmatch(value):
            return _moment(value) or value
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        if len(value) >= 16 and value[4:5] == "-" and _DATETIME.fullmatch(value):
            return _moment(value) or value
        return value
    return dumps(value).decode("utf-8")  # arrays (and anything else) are stringified


def _text(value: Value) -> str:
    if isinstance(value, Moment):
        return value.text
    if isinstance(value, str):
        return value
    return dumps(value).decode("utf-8")


_Path = Union[str, Tuple["_Path", Any]]  # where a nested object is: "properties", (path, key)


def _dotted(path: _Path, key: Any) -> str:
    """``path`` and ``key`` spelt out: ``properties.shipping.city``."""
    parent = path if isinstance(path, str) else _dotted(*path)
    return f"{parent}.{key}" if parent else str(key)


class _Row:
    """One row being filled: first value per column wins, later different ones are discarded."""

    __slots__ = ("discards", "received_at", "row_id", "table", "values")

    def __init__(self, table: str, row_id: str, received_at: Optional[datetime]) -> None:
        self.table = table
        self.row_id = row_id
        self.received_at = received_at
        self.values: Dict[str, Value] = {}
        self.discards: List[Discard] = []

    def discard(self, column: str, value: Any, reason: str) -> None:
        normalized = value if isinstance(value, str) else _normalize(value)
        text = "" if normalized is None else _text(normalized)
        self.discards.append(
            Discard(self.table, self.row_id, column, text, reason, self.received_at)
        )

    def put(self, column: str, value: Value, *, reserved: bool = False) -> None:
        if reserved and column in _RESERVED_COLUMNS:
            self.discard(column, value, "reserved column name")
            return
        existing = self.values.get(column)
        if existing is None:
            self.values[column] = value
        elif _text(existing) != _text(value):
            self.discard(column, value, "another key maps to the same column")

    def flatten(self, prefix: str, obj: Mapping[str, Any], path: _Path, reserved: bool) -> None:
        """Put every leaf of ``obj`` as ``prefix + snake(key)_snake(subkey)...``.

        ``path`` names ``obj`` for discards (``"properties"``, or ``(parent path, key)``,
        spelt out only when a discard needs it).
        """
        values = self.values
        columns = _COLUMNS.get(prefix)
        if columns is None:
            columns = _COLUMNS[prefix] = {}
        for key, raw in obj.items():
            names = columns.get(key)
            if names is None:
                names = _column(columns, prefix, key)
            nested, column = names  # nested: the prefix of this key's nested keys
            if not column:
                self.discard(_dotted(path, key), raw, "no usable column name")
                continue
            kind = type(raw)
            value: Value
            if kind is str:  # the most common leaf: a date-time, or text as it is
                value = raw
                if len(raw) >= 16 and raw[4] == "-" and _DATETIME.fullmatch(raw):
                    value = _moment(raw) or raw
            elif kind is dict:
                self.flatten(nested, raw, (path, key), reserved)
                continue
            else:
                normalized = _normalize(raw)
                if normalized is None:
                    continue
                value = normalized
            if reserved and column in _RESERVED_COLUMNS:
                self.discard(column, value, "reserved column name")
            elif column not in values:
                values[column] = value
            else:
                self.put(column, value)


# prefix -> key -> (the prefix of the key's nested keys: prefix + snake_cased key + "_",
# the column name that key's leaf value goes to, at most 63 bytes); ``""`` twice when the
# key gives no name. The same keys come in every message, so each is worked out once (bounded).
_COLUMNS: Dict[str, Dict[Any, Tuple[str, str]]] = {}
_COLUMNS_MAX = 65_536
_COLUMNS_COUNT = [0]


def _column(columns: Dict[Any, Tuple[str, str]], prefix: str, key: Any) -> Tuple[str, str]:
    part = snake_case(str(key))
    nested = prefix + part if part else ""
    column = nested
    if len(column.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        column = snake_case(column)
    if _COLUMNS_COUNT[0] >= _COLUMNS_MAX:
        _COLUMNS.clear()  # ``columns`` stays usable by its caller; new ones start afresh
        _COLUMNS_COUNT[0] = 0
    _COLUMNS_COUNT[0] += 1
    names = columns[key] = (nested + "_" if nested else "", column)
    return names


def _id_text(value: Any) -> Optional[str]:
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value)
    return None


def _moment(value: Any) -> Optional[Moment]:
    """``value`` as a Moment if it is an ISO-8601 string (no offset means UTC)."""
    return _parse_moment(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=4096)  # the times of one request's messages repeat
def _parse_moment(value: str) -> Optional[Moment]:
    try:  # the C parser first (5x faster); parse_iso for what it refuses (e.g. "Z" on 3.10)
        at = datetime.fromisoformat(value)
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
        return Moment.of(value, at)
    except ValueError:
        pass
    try:
        return Moment.of(value, parse_iso(value))
    except ValueError:
        return None


_ID_KEYS = (("anonymous_id", "anonymousId"), ("user_id", "userId"))
_TIME_KEYS = (
    ("received_at", "receivedAt"),
    ("sent_at", "sentAt"),
    ("timestamp", "timestamp"),
    ("original_timestamp", "originalTimestamp"),
)


def _common(row: _Row, message: Mapping[str, Any], uuid_ts: Moment) -> None:
    values = row.values
    values["id"] = row.row_id
    get = message.get
    for column, key in _ID_KEYS:
        raw = get(key)
        if type(raw) is str:  # the usual id: taken as it is
            if raw:
                values[column] = raw
        elif raw is not None:
            text = _id_text(raw)
            if text is not None:
                values[column] = text
    for column, key in _TIME_KEYS:
        raw = get(key)
        if raw is None:
            continue
        moment = _parse_moment(raw) if isinstance(raw, str) else None
        if moment is not None:
            values[column] = moment
        else:
            row.discard(column, raw, "not an ISO-8601 time")
    values["uuid_ts"] = uuid_ts
    context = get("context")
    if isinstance(context, dict):
        row.flatten("context_", context, "context", reserved=False)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def build_rows(messages: Iterable[Mapping[str, Any]], uuid_ts: datetime) -> Rows:
    """Turn stored messages (camelCase wire form) into rows for Segment's tables.

    A message without a usable ``messageId`` or ``type`` is skipped with a discard
    naming why; a repeated messageId in the batch is loaded once. Identifies are also
    folded into one ``users`` row per userId, the latest (by receivedAt) value of
    each trait winning.
    """
    rows = Rows()
    users: Dict[str, _Row] = {}
    stamp = Moment.of(uuid_ts.isoformat(), uuid_ts)
    seen: Set[str] = set()
    for message in messages:
        raw_id = message.get("messageId")
        message_id = raw_id if type(raw_id) is str and raw_id else _id_text(raw_id)
        kind = message.get("type")
        table = _TABLE_OF_TYPE.get(kind if type(kind) is str else str(kind))
        if message_id is None or table is None:
            what = "messageId" if message_id is None else "type"
            body = dumps(dict(message)).decode("utf-8")
            rows.discards.append(
                Discard("", message_id or "", what, body, f"no usable {what}", None)
            )
            continue
        if message_id in seen:
            continue
        seen.add(message_id)
        raw_received = message.get("receivedAt")
        received = _parse_moment(raw_received) if isinstance(raw_received, str) else None
        row = _Row(table, message_id, received.at if received else None)
        _common(row, message, stamp)
        if table == "tracks":
            _track(rows, row, message)
        else:
            _other(rows, row, message, table)
            user_id = row.values.get("user_id")
            if table == "identifies" and isinstance(user_id, str):
                _merge_user(users, row, message, user_id)
    for user in users.values():
        rows.table("users").add(user.values)
        rows.discards.extend(user.discards)
    return rows


def _track(rows: Rows, row: _Row, message: Mapping[str, Any]) -> None:
    event = message.get("event")
    name = event if isinstance(event, str) else _text(_normalize(event) or "")
    row.values["event_text"] = name
    slug = snake_case(name)
    row.values["event"] = slug
    rows.table("tracks").add(row.values)  # not changed after: the event table gets a copy
    if row.discards:
        rows.discards.extend(row.discards)
        row.discards = []
    if not slug:
        rows.discards.append(
            Discard("tracks", row.row_id, "event", name, "event name gives no table name", None)
        )
        return
    table = "_" + slug if slug in RESERVED_TABLES else slug
    row.table = table  # the same row goes on, as the event table's
    row.values = dict(row.values)
    row.flatten("", _dict(message.get("properties")), "properties", reserved=True)
    rows.table(table).add(row.values)
    if row.discards:
        rows.discards.extend(row.discards)


def _other(rows: Rows, row: _Row, message: Mapping[str, Any], table: str) -> None:
    if table in ("pages", "screens"):
        for key in ("name", "category"):
            value = _normalize(message.get(key))
            if value is not None:
                row.put(key, _text(value))
        row.flatten("", _dict(message.get("properties")), "properties", reserved=True)
    else:
        for column, key in (("group_id", "groupId"), ("previous_id", "previousId")):
            text = _id_text(message.get(key))
            if text is not None:
                row.values[column] = text
        row.flatten("", _dict(message.get("traits")), "traits", reserved=True)
    rows.table(table).add(row.values)
    rows.discards.extend(row.discards)


def _merge_user(
    users: Dict[str, _Row], identify: _Row, message: Mapping[str, Any], user_id: str
) -> None:
    """Fold an identify into its user's row: the latest value of each trait wins."""
    update = _Row("users", user_id, identify.received_at)
    update.values = {"id": user_id, "uuid_ts": identify.values["uuid_ts"]}
    if identify.received_at is not None:
        update.values["received_at"] = identify.values["received_at"]
    update.flatten("", _dict(message.get("traits")), "traits", reserved=False)
    current = users.get(user_id)
    if current is None:
        users[user_id] = update
        return
    newer = (update.received_at or _EPOCH) >= (current.received_at or _EPOCH)
    if newer:
        current.values = {**current.values, **update.values}
        current.received_at = update.received_at
    else:
        current.values = {**update.values, **current.values}
    current.discards.extend(update.discards)


_TEXT_TYPES = frozenset({"text", "character varying", "character", "citext", "name"})
_INT_RANGES = {
    "bigint": 2**63,
    "integer": 2**31,
    "smallint": 2**15,
}
_FLOAT_TYPES = frozenset({"double precision", "real", "numeric"})
_TIME_TYPES = frozenset({"timestamp with time zone", "timestamp without time zone", "date"})
_JSON_TYPES = frozenset({"json", "jsonb"})
_MISFIT = object()
Converter = Callable[[Value], Any]


def _converter(column_type: str) -> Converter:
    """The function fitting a value to a column of ``column_type`` (``_MISFIT`` if it cannot)."""
    if column_type in _TEXT_TYPES:
        return _text
    bound = _INT_RANGES.get(column_type)
    if bound is not None:
        limit = bound

        def to_int(value: Value) -> Any:
            if type(value) is int and -limit <= value < limit:
                return value
            return _MISFIT

        return to_int
    if column_type in _FLOAT_TYPES:
        return lambda value: value if type(value) in (int, float) else _MISFIT
    if column_type == "boolean":
        return lambda value: value if type(value) is bool else _MISFIT
    if column_type in _TIME_TYPES:
        return lambda value: value.iso if type(value) is Moment else _MISFIT
    if column_type in _JSON_TYPES:
        return lambda value: value.text if type(value) is Moment else value
    return _text


def fit(value: Value, column_type: str) -> Tuple[bool, Any]:
    """Fit ``value`` to a column of ``column_type``: ``(True, json_value)`` or ``(False, None)``.

    A text column takes anything (as text); a float column takes ints and floats; an
    integer column takes ints in its range; boolean only booleans; a timestamp column
    only date-times. A column of another type (changed by hand) gets the value's text.
    """
    converted = _converter(column_type)(value)
    return (False, None) if converted is _MISFIT else (True, converted)


class _Null(str):
    """COPY text's NULL marker: a type of its own, so a row's pattern tells it from text."""


_NULL = _Null("\\N")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_TIMESTAMP = object()  # a plan's mark: a Moment into a time column is taken as it is


def _copy_text(value: Value, column_type: str) -> Any:
    """``value`` as COPY text for a column of ``column_type`` (unescaped), or ``_MISFIT``.

    Formats as psycopg's text dumpers did: booleans ``t``/``f``, numbers with ``str``.
    """
    return _copy_converter(column_type)(value)


@functools.lru_cache(maxsize=256)  # a handful of column types
def _copy_converter(column_type: str) -> Converter:
    """The function :func:`_copy_text` applies for a column of ``column_type``."""
    if column_type in _TEXT_TYPES:
        return _text
    convert = _converter(column_type)

    def to_copy_text(value: Value) -> Any:
        converted = convert(value)
        if converted is _MISFIT or type(converted) is str:
            return converted
        if isinstance(converted, Moment):
            return converted.iso
        if type(converted) is bool:
            return "t" if converted else "f"
        return str(converted)

    return to_copy_text


def _escape(text: str) -> str:
    if "\x00" in text:
        raise ValueError("PostgreSQL text cannot hold NUL (0x00) characters")
    return text.translate(_COPY_ESCAPES)


def copy_rows(table: Table, columns: Mapping[str, str]) -> Tuple[List[str], str, List[Discard]]:
    """Fit every row of ``table`` to the table's ``columns`` (name -> PostgreSQL type).

    Returns the column names (``id`` first), the rows as COPY text data (text format,
    one line per row, ``\\N`` where a row has no value) and the discards. A value that
    does not fit its column is left out (the column stays NULL) and returned as a
    Discard with the column type in its reason.

    Rows are formatted by the types of their values: per pattern of types (a handful
    per batch) a plan says which positions need converting, the rest (text into text
    columns, date-times into time columns, the NULLs) are joined as they are, and the
    whole block is checked once for characters COPY needs escaped (then it is built
    again value by value). Measured on the bench's events (docs/performance.md): a
    fifth of the time of fitting into value lists and psycopg's ``write_row``.
    """
    names = sorted(table.kinds, key=lambda column: column != "id")  # stable: id first
    missing = [column for column in names if column not in columns]
    if missing:
        raise KeyError(f"{table.name}.{missing[0]} has no column")
    types = [columns[column] for column in names]
    width = len(names)
    nulls = [_NULL] * width
    plans: Dict[Tuple[type, ...], Any] = {}
    lines: List[str] = []
    expected_nulls = 0
    every = operator.itemgetter(*names) if width > 1 else None  # a tuple of every value
    for row in table.rows:
        values: Sequence[Any]
        if every is not None and len(row) == width:  # the usual row: a value in each column
            values = every(row)  # (a row's keys are among the table's columns)
        else:
            values = list(map(row.get, names, nulls))  # row.get(name, NULL) per column
        shape = tuple(map(type, values))
        plan = plans.get(shape, _MISFIT)
        if plan is _MISFIT:
            plan = plans[shape] = _plan(shape, types)
        if plan:
            values = list(values)
            for index, to_copy_text in plan:
                converted = to_copy_text(values[index])
                if converted is _MISFIT:  # a value that does not fit: the slow way, discarding
                    return _copy_rows_one_by_one(table, names, types)
                values[index] = converted
        lines.append("\t".join(values))
        expected_nulls += width - len(row)
    lines.append("")
    data = "\n".join(lines)
    if (
        data.count("\\") != expected_nulls
        or data.count("\t") != (width - 1) * len(table.rows)
        or data.count("\n") != len(table.rows)
        or "\r" in data
        or "\x00" in data
    ):  # a value holds a character COPY needs escaped
        return _copy_rows_one_by_one(table, names, types)
    return names, data, []


def _plan(shape: Tuple[type, ...], types: Sequence[str]) -> List[Tuple[int, Converter]]:
    """The positions of a row of this pattern of types that need converting to text."""
    plan = []
    for index, (kind, column_type) in enumerate(zip(shape, types)):
        if kind is _Null or (kind is str and column_type in _TEXT_TYPES):
            continue  # a NULL, or text into text, as it is
        if kind is Moment and column_type == "timestamp with time zone":
            continue  # its str value is the ISO form with offset
        plan.append((index, _copy_converter(column_type)))
    return plan


def _copy_rows_one_by_one(
    table: Table, names: Sequence[str], types: Sequence[str]
) -> Tuple[List[str], str, List[Discard]]:
    """:func:`copy_rows` value by value: escaping each value, discarding what does not fit."""
    lines: List[str] = []
    discards: List[Discard] = []
    for row in table.rows:
        out: List[str] = []
        for column, column_type in zip(names, types):
            value = row.get(column)
            if value is None:
                out.append(_NULL)
                continue
            converted = _copy_text(value, column_type)
            if converted is not _MISFIT:
                out.append(_escape(converted))
                continue
            out.append(_NULL)
            received = row.get("received_at")
            discards.append(
                Discard(
                    table.name,
                    str(row["id"]),
                    column,
                    _text(value),
                    f"a {kind_of(value)} value in a {column_type} column",
                    received.at if isinstance(received, Moment) else None,
                )
            )
        lines.append("\t".join(out) + "\n")
    return list(names), "".join(lines), discards
