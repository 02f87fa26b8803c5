"""Checking one ingest request: parse, authorize, validate (pure: no I/O, no shared state).

The collector calls :func:`check_request` on the event loop for small bodies, in an
insert thread for big ones, and in its ingest worker processes (``_workers``).
"""

from __future__ import annotations

from datetime import datetime
from typing import FrozenSet, Optional, Union

from tracklane.collector._ingest import (
    Prepared,
    RequestError,
    body_write_key,
    may_hold_nul,
    parse_body,
    prepare_batch,
    prepare_single,
)
from tracklane.collector._ingest_route import Answer
from tracklane.collector._json import dumps
from tracklane.collector._shallow import read_batch

__all__ = ["check_request", "check_request_fully", "json_error", "unauthorized"]


def check_request(
    raw: bytes,
    header_key: Optional[str],
    message_type: Optional[str],
    received_at: datetime,
    write_keys: FrozenSet[str],
) -> Union[Answer, Prepared]:
    """Parse, authorize and validate one request: what to store, or the refusal.

    A batch is read shallowly first (``_shallow``), whose outcome is the same; a body it
    cannot read is checked by :func:`check_request_fully`.
    """
    if message_type is None:
        batch = read_batch(raw)
        if batch is not None:
            key = header_key if header_key is not None else batch.write_key
            refusal = _authorize(key, write_keys)
            if refusal is not None:
                return refusal
            return batch.prepare(key or "", received_at)
    return check_request_fully(raw, header_key, message_type, received_at, write_keys)


def check_request_fully(
    raw: bytes,
    header_key: Optional[str],
    message_type: Optional[str],
    received_at: datetime,
    write_keys: FrozenSet[str],
) -> Union[Answer, Prepared]:
    """:func:`check_request` with every message parsed whole: the reference."""
    try:
        payload = parse_body(raw)
        body_key = body_write_key(payload)
    except RequestError as exc:
        return json_error(400, str(exc))
    key = header_key if header_key is not None else body_key
    refusal = _authorize(key, write_keys)
    if refusal is not None:
        return refusal
    try:
        if message_type is None:
            return prepare_batch(payload, key or "", received_at, nul_free=not may_hold_nul(raw))
        single = prepare_single(payload, message_type, key or "", received_at)
        return Prepared([single], [])
    except RequestError as exc:
        return json_error(400, str(exc))


def _authorize(key: Optional[str], write_keys: FrozenSet[str]) -> Optional[Answer]:
    """The 401 for a write key not among ``write_keys`` (when there are any), else None."""
    if write_keys and key not in write_keys:
        return unauthorized("missing write key" if key is None else "unknown write key")
    return None


def json_error(status: int, message: str) -> Answer:
    """An error answer: ``{"success": false, "error": message}``."""
    return Answer(status, dumps({"success": False, "error": message}))


def unauthorized(message: str) -> Answer:
    """A 401 answer asking for HTTP Basic credentials."""
    return Answer(status=401, body=dumps({"success": False, "error": message}), challenge=True)
