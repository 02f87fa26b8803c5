"""Validation and preparation of incoming messages (pure: no I/O, no web framework).

The rules are the client's (``tracklane.messages.check_wire_message``), the limits
``tracklane.config``'s and the time parser ``tracklane._iso``'s: one schema for the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

import orjson

from tracklane._iso import format_iso, parse_iso
from tracklane.collector._json import dumps, loads
from tracklane.collector.storage import StoredMessage
from tracklane.config import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES
from tracklane.exceptions import ValidationError
from tracklane.messages import (
    MAX_MESSAGE_ID_LENGTH,
    MESSAGE_TYPES,
    check_wire_message,
    new_message_id,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_ID_LENGTH",
    "MAX_REQUEST_BYTES",
    "MESSAGE_TYPES",
    "Prepared",
    "Rejected",
    "Rejection",
    "RequestError",
    "Times",
    "body_write_key",
    "may_hold_nul",
    "message_id_of",
    "parse_body",
    "prepare_batch",
    "prepare_one",
    "prepare_single",
]


class RequestError(ValueError):
    """The whole request is refused (HTTP 400); ``str(exc)`` says why."""


class _Rejected(Exception):
    """One message of a batch is refused; ``str(exc)`` says why."""


@dataclass(frozen=True)
class Rejection:
    """A message of a batch that was not stored, and why."""

    index: int
    message_id: Optional[str]
    reason: str

    def to_json(self) -> Dict[str, Any]:
        """Return the wire form used in responses."""
        return {"index": self.index, "messageId": self.message_id, "reason": self.reason}


@dataclass(frozen=True)
class Prepared:
    """The outcome of validating a batch: what to store and what was refused."""

    messages: List[StoredMessage]
    rejected: List[Rejection]


def parse_body(raw: bytes) -> Dict[str, Any]:
    """Parse a request body that must be one JSON object; raises RequestError."""
    if not raw.strip():
        raise RequestError("request body is empty")
    try:
        payload = loads(raw)
    except ValueError as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError("request body must be a JSON object")
    return payload


def body_write_key(payload: Dict[str, Any]) -> Optional[str]:
    """Return the ``writeKey`` given in the body, if any; raises RequestError if malformed."""
    key = payload.get("writeKey")
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise RequestError("'writeKey' must be a string")
    if "\x00" in key or _SURROGATE.search(key):
        raise RequestError("'writeKey' contains a NUL character or a lone surrogate")
    return key


def may_hold_nul(raw: bytes) -> bool:
    """Whether a JSON body may hold a NUL character: only its escape can write one.

    Strict JSON has no raw control character in a string, so a body without the text
    ``\\u0000`` parses to no NUL at all. Looking for a backslash first (``memchr``) costs
    a fiftieth of looking for the escape, and most bodies have none.
    """
    return b"\\" in raw and _NUL_ESCAPE in raw


def prepare_batch(
    payload: Dict[str, Any], write_key: str, received_at: datetime, *, nul_free: bool = False
) -> Prepared:
    """Validate every message of a ``{"batch": [...]}`` body, keeping the valid ones.

    ``nul_free`` says that the body parsed holds no NUL character (``not may_hold_nul``),
    so that the messages need no NUL check of their own.
    """
    batch = payload.get("batch")
    if not isinstance(batch, list):
        raise RequestError("request body must have a 'batch' array of messages")
    try:
        sent_at = _time_field(payload, "sentAt")
    except _Rejected as exc:
        raise RequestError(str(exc)) from None
    times = _Times(received_at, sent_at, payload["sentAt"] if sent_at is not None else None)
    return _prepare_all(batch, write_key, times, nul_free)


def _prepare_all(batch: List[Any], write_key: str, times: _Times, nul_free: bool) -> Prepared:
    """Validate the messages of a batch: the usual ones here, the others by _prepare.

    A message of the usual shape (a dict with a valid messageId and no sentAt of its own,
    whose timestamp is absent or valid text, valid by check_wire_message's rules and no
    bigger than the limit) is encoded once, with the batch's sentAt already in place,
    and its row built as _prepare builds it. Any other message, or one that _prepare
    would refuse, is left as it was (but for its writeKey, which both paths drop) to
    _prepare, whose outcome is the reference: the tests compare the two paths. One loop
    without calls of its own: this runs for every message the collector receives.
    """
    messages: List[StoredMessage] = []
    rejected: List[Rejection] = []
    append = messages.append
    seen = times.seen
    received_text = times.received_text
    sent_text = times.batch_sent_text
    size_limit = MAX_MESSAGE_BYTES + len(times.sent_at_member)  # measured without sentAt
    encode = orjson.dumps
    for index, message in enumerate(batch):
        if type(message) is dict and "sentAt" not in message:
            message_id = message.get("messageId")
            original = message.get("timestamp")
            timestamp: Optional[str] = None
            if original is None:
                timestamp = received_text
            elif type(original) is str:
                timestamp = seen.get(original)
                if timestamp is None:
                    timestamp = times.corrected_text(original)
            if (
                type(message_id) is str
                and message_id
                and len(message_id) <= MAX_MESSAGE_ID_LENGTH
                and timestamp is not None
            ):
                try:
                    kind, user_id, anonymous_id = check_wire_message(message)
                except ValidationError:
                    kind = None
                if kind is not None:
                    message.pop("writeKey", None)
                    if sent_text is not None:
                        message["sentAt"] = sent_text
                    try:
                        encoded = encode(message)
                    except orjson.JSONEncodeError:
                        encoded = b""
                    if (
                        encoded
                        and len(encoded) <= size_limit
                        and (nul_free or _NUL_ESCAPE not in encoded)
                    ):
                        append(
                            _new_row(
                                StoredMessage,
                                (
                                    write_key,
                                    message_id,
                                    kind,
                                    user_id,
                                    anonymous_id,
                                    message.get("event") if kind == "track" else None,
                                    received_text,
                                    timestamp,
                                    original,
                                    encoded.decode("utf-8"),
                                ),
                            )
                        )
                        continue
                    if sent_text is not None:
                        del message["sentAt"]
        try:
            append(_prepare(message, write_key, times, None))
        except _Rejected as exc:
            rejected.append(Rejection(index, _message_id_of(message), str(exc)))
    return Prepared(messages, rejected)


def prepare_single(
    payload: Dict[str, Any], message_type: str, write_key: str, received_at: datetime
) -> StoredMessage:
    """Validate the body of a single-message endpoint; raises RequestError if invalid."""
    try:
        return _prepare(payload, write_key, _Times(received_at, None, None), message_type)
    except _Rejected as exc:
        raise RequestError(str(exc)) from None


def _prepare(
    message: object, write_key: str, times: _Times, forced_type: Optional[str]
) -> StoredMessage:
    """Validate one message and build its row; raises _Rejected with the reason."""
    if not isinstance(message, dict):
        raise _Rejected("message is not a JSON object")
    message.pop("writeKey", None)  # never store (nor serve back) the write key
    if forced_type is not None:
        message["type"] = forced_type
    encoded = _encode(message)
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise _Rejected(f"message is {len(encoded)} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        message_type, user_id, anonymous_id = check_wire_message(message)
    except ValidationError as exc:
        raise _Rejected(exc.problem) from None
    if _NUL_ESCAPE in encoded:  # orjson writes NUL as this escape: look closer
        _refuse_nul(message)
    timestamp = times.corrected(message)
    batch_sent_text = times.batch_sent_text
    if batch_sent_text is not None and message.get("sentAt") != batch_sent_text:
        # Each message keeps the sentAt its timestamp was corrected with, as Segment's do (the
        # debugger shows it). Appended to the encoded bytes: no second encode on the hot path.
        had_sent_at = "sentAt" in message
        message["sentAt"] = batch_sent_text
        encoded = _encode(message) if had_sent_at else encoded[:-1] + times.sent_at_member + b"}"
    message_id = message.get("messageId")
    if message_id is None:
        message_id = new_message_id()
        message["messageId"] = message_id
        encoded = _encode(message)
    # A positional tuple in StoredMessage's field order: a third of keyword construction.
    return _stored_message(
        (
            write_key,
            message_id,
            message_type,
            user_id,
            anonymous_id,
            message.get("event") if message_type == "track" else None,
            times.received_text,
            timestamp,
            message.get("timestamp"),
            encoded.decode("utf-8"),
        )
    )


def _stored_message(values: Tuple[Any, ...]) -> StoredMessage:
    return tuple.__new__(StoredMessage, values)


# _stored_message without the call, for _prepare_all's loop.
_new_row = tuple.__new__


# Fields stored in columns of their own or used as identifiers downstream: a NUL in them is
# refused (PostgreSQL text cannot hold one, and no destination expects one in an id). A NUL
# deeper in a message is ordinary JSON and kept, escaped, in the stored body.
_NUL_FIELDS = ("userId", "anonymousId", "messageId", "event", "groupId", "previousId")
_NUL_ESCAPE = b"\\u0000"


def _refuse_nul(message: Dict[str, Any]) -> None:
    for name in _NUL_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and "\x00" in value:
            raise _Rejected(f"{name!r} contains a NUL character (\\u0000), not allowed there")


class _Times:
    """Segment's corrected timestamps for one request, cached by the texts they come from.

    Messages of one batch often share a timestamp (and always the batch's sentAt), so
    each distinct pair is parsed and formatted once.
    """

    def __init__(
        self,
        received_at: datetime,
        batch_sent_at: Optional[datetime],
        batch_sent_text: Optional[str],
    ) -> None:
        self.received_at = received_at
        self.received_text = format_iso(received_at)
        self.batch_sent_at = batch_sent_at
        self.batch_sent_text = batch_sent_text
        self.sent_at_member = (
            b',"sentAt":' + dumps(batch_sent_text) if batch_sent_text is not None else b""
        )
        self._done: Dict[Tuple[Any, Any], str] = {}
        # The stored timestamp of a message without a sentAt of its own, by its timestamp
        # text: filled by ``corrected_text`` and ``corrected``, read by _prepare_all.
        self.seen: Dict[str, str] = {}

    def corrected_text(self, original: str) -> Optional[str]:
        """:meth:`corrected` of a message without a sentAt of its own, timestamp ``original``.

        ``None`` where :meth:`corrected` would refuse the message.
        """
        try:
            moment = parse_iso(original)
        except ValueError:
            return None
        sent_at = self.batch_sent_at
        try:
            text = format_iso(moment if sent_at is None else self.received_at - (sent_at - moment))
        except (OverflowError, ValueError):
            return None
        self.seen[original] = text
        return text

    def corrected(self, message: Dict[str, Any]) -> str:
        """The stored ``timestamp``; raises _Rejected for a bad timestamp or sentAt."""
        original = message.get("timestamp")
        own_sent_at = message.get("sentAt")
        if original is None and own_sent_at is None:
            return self.received_text
        cacheable = isinstance(original, str) and (
            own_sent_at is None or isinstance(own_sent_at, str)
        )
        if cacheable:
            hit = self._done.get((original, own_sent_at))
            if hit is not None:
                return hit
        sent_at = _time_field(message, "sentAt")
        text = _corrected(
            _time_field(message, "timestamp"), self.batch_sent_at or sent_at, self.received_at
        )
        if cacheable:
            self._done[(original, own_sent_at)] = text
            if own_sent_at is None and isinstance(original, str):
                self.seen[original] = text
        return text


def _encode(message: Dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        pass  # a lone surrogate, an integer wider than 64 bits, or nesting past 255 levels
    try:
        where = _lone_surrogate(message, "")
        if where is None:
            return dumps(message)
    except RecursionError:
        raise _Rejected("message is nested too deeply to be stored") from None
    except ValueError as exc:
        raise _Rejected(f"message cannot be stored as JSON: {exc}") from None
    path, char = where
    raise _Rejected(
        f"{path!r} contains a lone surrogate (\\u{ord(char):04x}), which is not valid Unicode"
    )


def _lone_surrogate(value: Any, path: str) -> Optional[Tuple[str, str]]:
    """Find a string holding a lone surrogate: return (its field path, the surrogate)."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (path or "message", found.group()) if found else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            found = _SURROGATE.search(key)
            if found:
                return (f"{name} (a key)", found.group())
            hit = _lone_surrogate(item, name)
            if hit is not None:
                return hit
    elif isinstance(value, list):
        for index, item in enumerate(value):
            hit = _lone_surrogate(item, f"{path}[{index}]")
            if hit is not None:
                return hit
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _time_field(message: Dict[str, Any], name: str) -> Optional[datetime]:
    """Parse an optional ISO-8601 field (absent or null gives ``None``)."""
    value = message.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Rejected(f"{name!r} must be an ISO-8601 string")
    try:
        return parse_iso(value)
    except ValueError:
        raise _Rejected(f"{name!r} is not an ISO-8601 time: {value[:64]!r}") from None


def _corrected(
    original: Optional[datetime], sent_at: Optional[datetime], received_at: datetime
) -> str:
    """Return Segment's corrected timestamp, ``receivedAt - (sentAt - originalTimestamp)``."""
    try:
        if original is None:
            return format_iso(received_at)
        if sent_at is None:
            return format_iso(original)
        return format_iso(received_at - (sent_at - original))
    except (OverflowError, ValueError):
        raise _Rejected("'timestamp' is out of range once corrected for clock skew") from None


def _message_id_of(message: object) -> Optional[str]:
    if isinstance(message, dict):
        message_id = message.get("messageId")
        if isinstance(message_id, str):
            return message_id
    return None


# For ``_shallow``, which leaves to this module the messages it does not handle as it would.
Times = _Times
Rejected = _Rejected
message_id_of = _message_id_of


def prepare_one(message: object, write_key: str, times: _Times) -> StoredMessage:
    """Validate one message of a batch and build its row; raises Rejected with the reason."""
    return _prepare(message, write_key, times, None)
