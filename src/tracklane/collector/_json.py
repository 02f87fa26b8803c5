"""JSON for the collector: orjson for speed, the stdlib where orjson would lose information.

orjson turns integers wider than 64 bits into floats and refuses lone surrogates; the
client sends integers of any size exactly, so bodies that may hold such numbers are
parsed with :mod:`json` instead.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn, Union

import orjson

__all__ = ["dumps", "loads", "loads_stored", "loads_stored_bytes"]

# 19 digits in a row may be an integer beyond 64 bits (or a long fraction, which is harmless).
# Looking for 19 digits: every digit becomes "0" (bytes.translate, in C), then one substring
# search. A regex search over a 500 KB body costs 30 times as much.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN = b"0" * 19


def loads(raw: bytes) -> Any:
    """Parse a request body; raises ValueError (with a reason) when it is not strict JSON.

    A lone surrogate escape (``"\\ud800"``) is kept, as the stdlib parser keeps it, so that
    the collector can refuse the one message holding it rather than the whole batch.
    """
    if _NINETEEN not in raw.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if b"\\u" not in raw:  # no escape at all: not a lone surrogate
                raise
            try:
                return _stdlib_loads(raw.decode("utf-8"))
            except ValueError:
                raise exc from None
    return _stdlib_loads(raw)


def _stdlib_loads(raw: Union[bytes, str]) -> Any:
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def loads_stored(text: str) -> Any:
    """Parse a body that :func:`dumps` wrote (so valid JSON, perhaps with wide integers)."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only the stdlib parser keeps it
        return json.loads(text)
    if _NINETEEN not in raw.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # a lone surrogate, kept as a \u escape
            pass
    return json.loads(text)


def loads_stored_bytes(raw: bytes) -> Any:
    """:func:`loads_stored` for the body as stored (UTF-8 bytes), without decoding it first."""
    if _NINETEEN not in raw.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # a lone surrogate, kept as a \u escape
            pass
    return json.loads(raw.decode("utf-8"))


def dumps(value: Any) -> bytes:
    """Serialize compactly as UTF-8; raises ValueError for values JSON cannot hold."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \u escape
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text}")
    return value
