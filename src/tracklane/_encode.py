"""Turn a message into JSON bytes once, at the call, without losing or raising anything.

The fast path is one ``orjson.dumps`` with a ``default`` hook for the types orjson leaves
out. A ``Decimal`` is sent as its exact text, by default as a JSON string (analytics-ruby's
choice), or with ``decimal_as="number"`` as a JSON number written with exactly the same
digits (``orjson.Fragment``): never through ``float``, so ``Decimal("0.1")`` is ``0.1`` and
``Decimal("12345678901234567890.12")`` keeps all its digits on the wire. A non-finite
Decimal (NaN, Infinity) has no JSON number: it is ``null``, as a float NaN is.

The bytes are also the deep snapshot of the caller's values: mutating them afterwards
changes nothing sent. What orjson refuses (integers beyond 64 bits, cycles, nesting deeper
than 254, invalid strings, odd keys) goes through :func:`to_json_safe` and the stdlib
encoder instead, which handle all of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Callable, Optional
from uuid import UUID, uuid4

import orjson

__all__ = [
    "FAST_OPTIONS",
    "ORJSON_OPTIONS",
    "JSONDefault",
    "default_for",
    "encode",
    "encode_refused",
    "encode_slowly",
    "to_json_safe",
]

JSONDefault = Callable[[Any], Any]

ORJSON_OPTIONS = _OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY
)
# The first try leaves out OPT_NON_STR_KEYS: with it orjson takes its slower path for every
# dict, about 0.5 µs of a 2 µs encode of a 600-byte track message (2026-11-30, orjson 3.11).
# Without it a non-text key raises instead, and ``encode_refused`` encodes again with the full
# options, so the bytes are the same either way.
FAST_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY
_MAX_DEPTH = 200
_CIRCULAR = "<circular reference>"
_TOO_DEEP = "<nested too deep>"


def encode(
    value: Any, user_default: Optional[JSONDefault] = None, decimal_as: str = "string"
) -> bytes:
    """Compact JSON bytes for ``value``; never raises."""
    default = default_for(user_default, decimal_as)
    try:
        return orjson.dumps(value, default=default, option=FAST_OPTIONS)
    except (TypeError, ValueError, RecursionError):
        return encode_refused(value, default, user_default, decimal_as)


def encode_refused(
    value: Any, default: JSONDefault, user_default: Optional[JSONDefault], decimal_as: str
) -> bytes:
    """After ``orjson.dumps(value, default=default, option=FAST_OPTIONS)`` raised: the full
    options (keys that are not text: ints, enums, str subclasses), then the slow path."""
    try:
        return orjson.dumps(value, default=default, option=_OPTIONS)
    except (TypeError, ValueError, RecursionError):
        return encode_slowly(value, user_default, decimal_as)


def encode_slowly(
    value: Any, user_default: Optional[JSONDefault] = None, decimal_as: str = "string"
) -> bytes:
    """The path for what orjson refused: convert everything in Python, then the stdlib."""
    walker = _Walker(user_default, decimal_as == "number")
    safe = walker.walk(value, 0)
    text = json.dumps(safe, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for token, digits in walker.big_ints.items():
        text = text.replace(f'"{token}"', digits, 1)
    return text.encode("utf-8")


def default_for(user_default: Optional[JSONDefault], decimal_as: str = "string") -> JSONDefault:
    """The ``default`` hook to give orjson, with the user's own converter tried first."""
    convert = _convert if decimal_as == "string" else _convert_decimal_as_number
    return convert if user_default is None else _with_user(user_default, convert)


def _with_user(user_default: JSONDefault, convert: JSONDefault) -> JSONDefault:
    def default(obj: Any) -> Any:
        try:
            return user_default(obj)
        except Exception:
            return convert(obj)

    return default


def decimal_number(value: Decimal) -> Optional[str]:
    """A Decimal's exact digits as JSON number text; None when it is not finite."""
    if not value.is_finite():
        return None
    return Decimal.__str__(value)  # never a subclass's __str__; always valid JSON number text


def _convert_decimal_as_number(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        text = decimal_number(obj)
        return None if text is None else orjson.Fragment(text)
    return _convert(obj)


def _convert(obj: Any) -> Any:
    """orjson's ``default``: one step towards a JSON type for what orjson does not know."""
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return _sorted_if_possible(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "replace")
    if isinstance(obj, (PurePath, UUID)):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):
        try:
            return model_dump(mode="json")
        except TypeError:
            return model_dump()
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    item = getattr(obj, "item", None)
    if callable(item) and type(obj).__module__ == "numpy":
        return item()
    if isinstance(obj, dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (Mapping,)):
        return dict(obj)
    if isinstance(obj, (list, tuple)):
        return list(obj)
    return str(obj)


def _sorted_if_possible(items: Any) -> list[Any]:
    try:
        return sorted(items)
    except Exception:  # unorderable, or a comparison that raises (Decimal NaN)
        return list(items)


def to_json_safe(value: Any, user_default: Optional[JSONDefault] = None) -> Any:
    """A tree of plain JSON types equal in content to ``value`` (slow path; never raises)."""
    return _Walker(user_default).walk(value, 0)


class _Walker:
    """Converts one value tree, remembering the containers on the current path."""

    def __init__(self, user_default: Optional[JSONDefault], decimal_number: bool = False) -> None:
        self.user_default = user_default
        self.decimal_number = decimal_number
        self.path: set[int] = set()
        self.big_ints: dict[str, str] = {}
        self.nonce = uuid4().hex

    def walk(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _valid_text(value)
        if isinstance(value, int) and not isinstance(value, enum.Enum):
            return self._int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, dt.datetime):
            aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
            return aware.isoformat()
        if isinstance(value, (dt.date, dt.time)):
            return value.isoformat()
        if self.decimal_number and isinstance(value, Decimal):
            return self._decimal(value, depth)
        if depth >= _MAX_DEPTH:
            return _TOO_DEEP
        marker = id(value)
        if marker in self.path:
            return _CIRCULAR
        self.path.add(marker)
        try:
            return self._container(value, depth)
        finally:
            self.path.discard(marker)

    def _int(self, value: int) -> Any:
        """Integers of any size, exactly; beyond Python's int-to-text limit by hand."""
        number = int.__index__(value)
        if number.bit_length() < 10_000:
            return number
        return self._raw(_int_text(number))

    def _decimal(self, value: Decimal, depth: int) -> Any:
        """A Decimal as a JSON number (``decimal_as="number"``), the user's converter first."""
        if self.user_default is not None and depth < _MAX_DEPTH:
            try:
                converted = self.user_default(value)
            except Exception:
                pass
            else:
                if converted is not value:
                    return self.walk(converted, depth + 1)
        return self._raw(decimal_number(value))

    def _raw(self, text: Optional[str]) -> Any:
        """A placeholder replaced by ``text`` (JSON number text) after encoding."""
        if text is None:
            return None
        token = f"tracklane-raw-{len(self.big_ints)}-{self.nonce}"
        self.big_ints[token] = text
        return token

    def _container(self, value: Any, depth: int) -> Any:
        if isinstance(value, Mapping):
            return {self._key(k): self.walk(v, depth + 1) for k, v in _items(value)}
        if isinstance(value, (list, tuple)):
            return [self.walk(v, depth + 1) for v in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return self.walk(fields, depth)
        converted = self._default(value)
        if isinstance(converted, str):
            return _valid_text(converted)
        if converted is value:
            return _safe_str(value)
        return self.walk(converted, depth + 1)

    def _default(self, value: Any) -> Any:
        if self.user_default is not None:
            try:
                return self.user_default(value)
            except Exception:
                pass
        try:
            return _convert(value)
        except Exception:
            return _safe_str(value)

    def _key(self, key: Any) -> str:
        if isinstance(key, str):
            return _valid_text(key)
        if key is None or isinstance(key, (bool, int, float)):
            return (
                json.dumps(key) if not isinstance(key, int) or isinstance(key, bool) else str(key)
            )
        safe = _Walker(self.user_default).walk(key, 0)  # keys are text: Decimal as a string
        return safe if isinstance(safe, str) else json.dumps(safe, sort_keys=True)


def _items(mapping: Mapping[Any, Any]) -> list[tuple[Any, Any]]:
    try:
        return list(mapping.items())
    except Exception:
        return []


def _valid_text(text: str) -> str:
    plain = text if type(text) is str else str.__str__(text)
    try:
        plain.encode("utf-8")
    except UnicodeEncodeError:
        return plain.encode("utf-8", "replace").decode("utf-8")
    return plain


def _int_text(number: int) -> str:
    """Decimal digits of any integer, without ``str()`` and its 4,300-digit limit."""
    if number < 0:
        return "-" + _int_text(-number)
    chunk = 10**1000
    parts: list[str] = []
    while number >= chunk:
        number, low = divmod(number, chunk)
        parts.append(f"{low:01000d}")
    parts.append(str(number))
    return "".join(reversed(parts))


def _safe_str(value: Any) -> str:
    try:
        return _valid_text(str(value))
    except Exception:
        return f"<unprintable {type(value).__name__}>"
