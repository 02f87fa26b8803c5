"""ISO-8601 times, one parser for the whole package (client calls and the collector).

``parse_iso`` takes what ``datetime.fromisoformat`` takes (``Z`` included, on every Python
version), plus fractions of any length, ``,`` as the decimal mark and offsets written
``+HH``/``+HHMM``; text without an offset means UTC. ``format_iso`` writes UTC with
milliseconds and ``Z``, the collector's stored form.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Optional

__all__ = ["format_iso", "parse_iso", "utc_now"]

_ISO = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?"
    r"(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def parse_iso(value: str) -> datetime:
    """Parse an ISO-8601 date or date-time into an aware datetime (no offset means UTC).

    Raises ValueError (``not an ISO-8601 time: ...``) when ``value`` is not ISO-8601.
    """
    text = value.strip()
    try:  # the common forms, in C
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
    except ValueError:
        moment = _parse_lenient(value, text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def _parse_lenient(value: str, text: str) -> datetime:
    match = _ISO.fullmatch(text)
    if match is None:
        raise ValueError(f"not an ISO-8601 time: {value!r}")
    year, month, day = (int(part) for part in match["date"].split("-"))
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    try:
        return datetime(
            year,
            month,
            day,
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
            int(fraction),
            tzinfo=_offset(match["offset"]),
        )
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 time: {value!r} ({exc})") from None


def _offset(text: Optional[str]) -> timezone:
    """Turn ``Z``, ``+HH``, ``+HHMM`` or ``+HH:MM`` into a timezone (UTC when absent)."""
    if text is None or text in ("Z", "z"):
        return timezone.utc
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"not a UTC offset: {text!r}")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if text[0] == "-" else delta)


def format_iso(moment: datetime) -> str:
    """Format an aware datetime as UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    utc = moment.astimezone(timezone.utc)
    year = utc.year
    # Pieces from tables, joined by an f-string without format specs: half the instructions
    # of seven "%02d"-like specs (the collector formats every message's corrected timestamp).
    return (
        f"{year if year >= 1000 else _YEAR_PADDED[year]}-{_TWO_DIGITS[utc.month]}-"
        f"{_TWO_DIGITS[utc.day]}T{_TWO_DIGITS[utc.hour]}:{_TWO_DIGITS[utc.minute]}:"
        f"{_TWO_DIGITS[utc.second]}{_MILLIS_Z[utc.microsecond // 1000]}"
    )


_TWO_DIGITS = tuple(f"{number:02d}" for number in range(100))
_YEAR_PADDED = tuple(f"{year:04d}" for year in range(1000))
_MILLIS_Z = tuple(f".{millis:03d}Z" for millis in range(1000))
