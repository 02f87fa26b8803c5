"""Parsing the read API's query string into a storage filter (pure)."""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from tracklane._iso import format_iso, parse_iso
from tracklane.collector._ingest import MESSAGE_TYPES, RequestError
from tracklane.collector.storage import EventFilter

__all__ = ["COUNT_PARAMS", "DEFAULT_LIMIT", "EVENTS_PARAMS", "MAX_LIMIT", "parse_query"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
COUNT_PARAMS = ("type", "userId", "anonymousId", "event", "since")
EVENTS_PARAMS = (*COUNT_PARAMS, "limit", "after")


def parse_query(
    items: Iterable[Tuple[str, str]], allowed: Tuple[str, ...], write_key: Optional[str]
) -> Tuple[EventFilter, int]:
    """Turn query ``items`` into a filter and a limit; raises RequestError when invalid."""
    values: Dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            raise RequestError(f"unknown query parameter {name!r}; allowed: {', '.join(allowed)}")
        if name in values:
            raise RequestError(f"query parameter {name!r} is given more than once")
        if value == "":
            raise RequestError(f"query parameter {name!r} is empty")
        values[name] = value
    message_type = values.get("type")
    if message_type is not None and message_type not in MESSAGE_TYPES:
        raise RequestError(
            f"unknown type {message_type!r}, expected one of {', '.join(MESSAGE_TYPES)}"
        )
    since = values.get("since")
    if since is not None:
        try:
            since = format_iso(parse_iso(since))
        except (ValueError, OverflowError):
            raise RequestError(f"'since' is not an ISO-8601 time: {since[:64]!r}") from None
    where = EventFilter(
        write_key=write_key,
        type=message_type,
        user_id=values.get("userId"),
        anonymous_id=values.get("anonymousId"),
        event=values.get("event"),
        since=since,
        after=_after(values.get("after")),
    )
    return where, _limit(values.get("limit"))


def _after(text: Optional[str]) -> Optional[int]:
    """``after=<seq>``: a storage sequence number (0 means from the first event)."""
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise RequestError(
            f"'after' must be an event's seq (a whole number >= 0), not {text[:32]!r}"
        )
    return int(text)


def _limit(text: Optional[str]) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise RequestError(
            f"'limit' must be a whole number from 1 to {MAX_LIMIT}, not {text[:32]!r}"
        )
    return int(text)
