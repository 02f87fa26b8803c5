"""Reading import input: JSON Lines or CSV (with a column mapping), plain or gzip, and turning
each record into the Segment message to send, or a :class:`LineError`.

Memory stays flat: records are read one at a time; nothing is kept per record.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import orjson

from tracklane.cli._fields import ENVELOPE_FIELDS, FIELDS, TYPES

__all__ = [
    "ColumnMap",
    "Input",
    "LineError",
    "derived_message_id",
    "parse_mapping",
    "record_digest",
    "to_message",
]

Message = Dict[str, Any]
_GZIP_MAGIC = b"\x1f\x8b"
_blake2b = hashlib.blake2b
_CONVERSIONS = ("string", "number", "int", "float", "bool", "json")


class LineError(ValueError):
    """A record that cannot be sent: the field concerned and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# type -> the fields a message of that type may have (``type`` included)
_ALLOWED: Dict[str, FrozenSet[str]] = {
    kind: frozenset({"type", *(field for field, (_, types) in FIELDS.items() if kind in types)})
    for kind in TYPES
}


def to_message(record: Any) -> Message:
    """A record as the Segment message to send (``Client.forward`` checks the rest).

    A record is a JSON object with a known ``type`` and only the fields of a Segment message
    of that type; the fields a sender or receiver sets (``sentAt``, ``receivedAt``, ...:
    found in exports) are left out, and so are other types' fields that are null.
    """
    if type(record) is not dict:
        raise LineError("line", f"must be a JSON object, not {_kind(record)}")
    kind = record.get("type")
    allowed = _ALLOWED.get(kind) if type(kind) is str else None
    if allowed is None:
        if kind is None:
            raise LineError("type", f"is required (one of {', '.join(TYPES)})")
        raise LineError("type", f"must be one of {', '.join(TYPES)}, not {kind!r}")
    if record.keys() <= allowed:  # the common case, one set operation in C
        return record
    message: Message = {}
    for key, value in record.items():
        if key in allowed:
            message[key] = value
        elif key in ENVELOPE_FIELDS:
            continue
        elif key in FIELDS:
            if value is not None:
                raise LineError(key, f"is not part of {_article(str(kind))} {kind} message")
        else:
            raise LineError(key, "is not a field of a Segment message")
    return message


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null"}.get(type(value), "a number")


def derived_message_id(label: bytes, number: int, raw: bytes) -> str:
    """A stable id from the input's name, the record's number and its text: a re-sent record
    gets the same id, so the receiver deduplicates it. 32 hex digits (128 bits)."""
    return _blake2b(b"%s%d\n%s" % (label, number, raw), digest_size=16).hexdigest()


def record_digest(raw: bytes) -> str:
    """What the state file keeps of the last acknowledged record, to know it again."""
    return _blake2b(raw, digest_size=12).hexdigest()


@dataclass(frozen=True)
class ColumnMap:
    """How CSV columns become message fields: ``column -> (path, conversion)``; path ``None``
    ignores the column."""

    columns: Dict[str, Tuple[Optional[Tuple[str, ...]], str]]
    default_type: Optional[str]

    def record(self, row: Dict[str, str]) -> Dict[str, Any]:
        """The message of one CSV row; empty cells are left out."""
        message: Dict[str, Any] = {}
        if self.default_type is not None:
            message["type"] = self.default_type
        for column, cell in row.items():
            if column is None:
                raise LineError("row", "has more cells than the header has columns")
            if cell is None or cell == "":
                continue
            path, conversion = self.columns[column]
            if path is None:
                continue
            value = _convert(cell, conversion, column)
            target = message
            for part in path[:-1]:
                nested = target.setdefault(part, {})
                if not isinstance(nested, dict):
                    raise LineError(column, f"{'.'.join(path)} clashes with another column")
                target = nested
            target[path[-1]] = value
        return message


def _convert(cell: str, conversion: str, column: str) -> Any:
    if conversion == "string":
        return cell
    if conversion == "json":
        try:
            return orjson.loads(cell)
        except orjson.JSONDecodeError as exc:
            raise LineError(column, f"is not valid JSON ({exc})") from None
    if conversion == "bool":
        lowered = cell.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise LineError(column, f"is not true/false: {cell[:40]!r}")
    try:
        if conversion == "int" or (conversion == "number" and cell.strip().lstrip("-").isdigit()):
            return int(cell)
        return float(cell)
    except ValueError:
        raise LineError(column, f"is not a number: {cell[:40]!r}") from None


_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")


def parse_mapping(header: List[str], given: List[str], default_type: Optional[str]) -> ColumnMap:
    """Build the column map from the header and ``--map COLUMN=FIELD[:conversion]`` flags.

    Unmapped columns named like a field (``userId``, ``properties.plan``) map to it; any
    other column is an error naming it. ``COLUMN=`` ignores a column.
    """
    explicit: Dict[str, str] = {}
    for item in given:
        column, sep, target = item.partition("=")
        if not sep or not column:
            raise ValueError(f"--map {item!r}: expected COLUMN=FIELD (FIELD may be empty)")
        if column not in header:
            raise ValueError(f"--map {item!r}: the CSV has no column {column!r}")
        explicit[column] = target
    columns: Dict[str, Tuple[Optional[Tuple[str, ...]], str]] = {}
    for column in header:
        target = explicit.get(column, column)
        if target == "":
            columns[column] = (None, "string")
            continue
        path_text, _, conversion = target.partition(":")
        path = tuple(path_text.split("."))
        if path[0] not in FIELDS and path[0] != "type":
            raise ValueError(
                f"CSV column {column!r} is not a message field; map it, e.g. "
                f"--map '{column}=properties.{column}', or ignore it with --map '{column}='"
            )
        if len(path) > 1 and path[0] not in _OBJECT_FIELDS:
            raise ValueError(f"column {column!r}: {path[0]} has no nested fields")
        if conversion and conversion not in _CONVERSIONS:
            raise ValueError(
                f"column {column!r}: unknown conversion {conversion!r} "
                f"(one of {', '.join(_CONVERSIONS)})"
            )
        if not conversion:
            conversion = "json" if len(path) == 1 and path[0] in _OBJECT_FIELDS else "string"
        columns[column] = (path, conversion)
    if "type" not in {p[0][0] for p in columns.values() if p[0]} and default_type is None:
        raise ValueError("the CSV has no type column: give --type, e.g. --type track")
    return ColumnMap(columns, default_type)


class Input:
    """One input (a path or ``-``): its records, how far reading got, and its identity."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_stdin = name == "-"
        base = "stdin" if self.is_stdin else os.path.basename(name)
        if base.endswith(".gz"):
            base = base[:-3]
        self.label = base
        self.label_bytes = hashlib.blake2b(base.encode(), digest_size=16).digest()
        self._raw: Optional[BinaryIO] = None
        self.compressed = False
        self.size: Optional[int] = None
        self._final = 0

    def open(self) -> BinaryIO:
        """Open for reading (gzip recognised by its magic bytes); returns the decoded stream."""
        if self.is_stdin:
            raw: BinaryIO = sys.stdin.buffer
        else:
            raw = open(self.name, "rb")  # noqa: SIM115 - closed by close()
            self.size = os.fstat(raw.fileno()).st_size
        self._raw = raw
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        if head == _GZIP_MAGIC:
            self.compressed = True
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        return raw

    def position(self) -> int:
        """Bytes of the (compressed) file read so far: what the progress bar counts."""
        if self._raw is None or self.is_stdin:
            return 0
        if self._raw.closed:
            return self._final
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        """Close the file (never stdin)."""
        if self._raw is not None and not self.is_stdin:
            self._final = self.position()
            self._raw.close()


def is_csv(name: str, forced: Optional[str]) -> bool:
    """Whether the input is CSV: ``--format``, else the name (``.csv``, ``.csv.gz``)."""
    if forced is not None:
        return forced == "csv"
    base = name[:-3] if name.endswith(".gz") else name
    return base.lower().endswith(".csv")


def csv_rows(
    stream: BinaryIO, make_map: Callable[[List[str]], ColumnMap]
) -> Iterator[Tuple[int, bytes, Callable[[], Dict[str, Any]]]]:
    """``(record number, raw text, build)`` per CSV row; ``build`` may raise LineError."""
    text: IO[str] = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    mapping = make_map(header)
    for number, cells in enumerate(reader, start=1):
        raw = ",".join(cells).encode()
        if len(cells) > len(header):
            yield number, raw, _too_many
            continue
        row = dict(zip(header, cells))
        yield number, raw, (lambda row=row: mapping.record(row))  # type: ignore[misc]


def _too_many() -> Dict[str, Any]:
    raise LineError("row", "has more cells than the header has columns")
