"""Build and validate the six message types, in the wire shape of Segment's Tracking API.

Validation raises :class:`~tracklane.exceptions.ValidationError` naming the field. The key set
of each message matches segment-analytics-python's, so a switch changes nothing on the wire
but ``context.library``.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Dict, Optional
from uuid import UUID

from ._context import current_scope
from ._ids import new_message_id
from ._iso import parse_iso
from ._version import __version__
from .exceptions import ValidationError

__all__ = [
    "LIBRARY",
    "MAX_MESSAGE_ID_LENGTH",
    "MESSAGE_TYPES",
    "REQUIRED_WIRE_FIELD",
    "Message",
    "alias_fields",
    "check_wire_message",
    "format_timestamp",
    "group_fields",
    "identify_fields",
    "new_message_id",
    "now_timestamp",
    "prepare_common",
    "track_fields",
    "view_fields",
    "wire_id",
]

Message = Dict[str, Any]
LIBRARY = {"name": "tracklane", "version": __version__}
MAX_MESSAGE_ID_LENGTH = 100
MESSAGE_TYPES = ("alias", "group", "identify", "page", "screen", "track")

# ".000+00:00" to ".999+00:00": a concatenation instead of a format spec per millisecond
# (the ``:03d`` formatter is ~60 instruction-cache misses when a call runs cold; 57 KB).
_MILLIS_TAIL = tuple(f".{ms:03d}+00:00" for ms in range(1000))
# The second now being stamped: ``(start, end, "YYYY-MM-DDTHH:MM:SS")``, start and end as
# ``time.time()`` floats. One tuple, so a thread never sees one second's start with another's
# text.
_second: tuple[float, float, str] = (0.0, 0.0, "")


def now_timestamp() -> str:
    """The current UTC time as ISO-8601 with milliseconds and an explicit offset.

    Calls within the same second share its formatted date and time (``strftime`` is the slow
    part); within it a call does two float comparisons, a subtraction, a product and an
    index. Measured with cachegrind, one call after cache-trashing Python (as between a web
    server's requests), 2026-11-30: 2,630 instructions and 64 instruction-cache misses,
    against 4,270 and 128 for the integer milliseconds and ``divmod`` done before.
    """
    global _second
    now = time.time()
    second = _second
    start = second[0]
    if not start <= now < second[1]:
        start = now // 1.0  # floor, also before 1970
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(start)))
        _second = second = (start, start + 1.0, stamp)
    # For any clock past 1970-01-01T00:00:02, now - start is exact and below 1.0, so the
    # index is 0 to 999: the milliseconds, truncated.
    return second[2] + _MILLIS_TAIL[int((now - start) * 1000.0)]


# Text already in wire form (milliseconds and a +HH:MM offset or Z), as in historical
# imports and replays: checked and kept, not parsed and re-formatted. Measured per call
# (CPU time, same loaded 2-core machine, interleaved): 5.4-5.9 µs before, 2.2-2.5 µs after.
# Calls without a timestamp never come here.
_WIRE_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(?:[+-]\d\d:\d\d|Z)")


def format_timestamp(value: Any, field: str = "timestamp") -> str:
    """A caller's timestamp (datetime, date or ISO-8601 text) in wire form.

    A naive datetime means UTC; an aware one keeps its offset.
    """
    if type(value) is str and _WIRE_TIME.fullmatch(value) and not value.endswith("-00:00"):
        text = value[:-1] + "+00:00" if value[-1] == "Z" else value
        try:
            dt.datetime.fromisoformat(text)  # a real date and time (no 2024-02-30)
        except ValueError:
            pass  # the general path below says what is wrong
        else:
            return text
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        moment = _parse_iso(value, field)
    else:
        raise ValidationError(
            field, f"must be a datetime, a date or ISO-8601 text, not {type(value).__name__}"
        )
    offset = moment.utcoffset()
    if offset is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    elif offset.seconds % 60 or offset.microseconds:
        moment = moment.astimezone(dt.timezone.utc)  # the wire allows only +HH:MM offsets
    return moment.isoformat(timespec="milliseconds")


def _parse_iso(text: str, field: str) -> dt.datetime:
    try:
        return parse_iso(text)
    except ValueError:
        raise ValidationError(field, f"not an ISO-8601 time: {text[:60]!r}") from None


def coerce_id(field: str, value: Any) -> Optional[str]:
    """An id as wire text: strings as given, numbers and UUIDs converted as segment-analytics-python
    does (``str(value)``, so ``3.0`` stays ``"3.0"``); ``None`` and ``""`` mean absent."""
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        return value or None
    if isinstance(value, str):
        return str.__str__(value) or None
    if isinstance(value, bool):
        raise ValidationError(field, "must be a string or a number, not a bool")
    if isinstance(value, (int, float, Decimal, UUID)):
        try:
            return _plain_text(value)
        except Exception:
            raise ValidationError(field, "could not be turned into text") from None
    raise ValidationError(field, f"must be a string or a number, not {kind.__name__}")


def _plain_text(value: Any) -> str:
    """``str()`` of a number or UUID by its base type, so a subclass's ``__str__`` never runs."""
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, Decimal):
        return Decimal.__str__(value)
    return UUID.__str__(value)


def mapping(field: str, value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping (``None`` gives an empty one); else a ValidationError."""
    if value is None:
        return {}
    if type(value) is dict or isinstance(value, Mapping):
        return value
    raise ValidationError(field, f"must be a mapping (dict), not {type(value).__name__}")


def text(field: str, value: Any, required: bool) -> Optional[str]:
    """A free-text field such as ``event`` or ``name``."""
    if isinstance(value, str):
        if value:
            return value if type(value) is str else str.__str__(value)
    elif value is not None:
        raise ValidationError(field, f"must be a string, not {type(value).__name__}")
    if required:
        raise ValidationError(field, "is required")
    return None


def prepare_common(
    message: Message,
    user_id: Any,
    anonymous_id: Any,
    context: Any,
    timestamp: Any,
    integrations: Any,
    message_id: Any,
    require_identity: bool = True,
) -> Message:
    """Fill the fields every type shares, validating them.

    Written for speed (this runs inside every call): the common cases (string ids, plain
    dicts, no timestamp or message id) take the shortest path.
    """
    uid = user_id if type(user_id) is str and user_id else coerce_id("user_id", user_id)
    if anonymous_id is not None:
        anon = (
            anonymous_id if type(anonymous_id) is str else coerce_id("anonymous_id", anonymous_id)
        )
        message["anonymousId"] = anon or None
    scope = current_scope()
    if scope is not None:  # a tracklane.context() scope's ids, for calls that give none
        if uid is None:
            uid = scope.user_id
        if message.get("anonymousId") is None:
            message["anonymousId"] = scope.anonymous_id
    if require_identity and uid is None and message.get("anonymousId") is None:
        raise ValidationError("user_id", "a user_id or an anonymous_id is required")
    message["userId"] = uid
    if context is None and scope is None:
        message["context"] = {"library": LIBRARY}
    else:
        if scope is not None:
            ctx = scope.context_for(None if context is None else mapping("context", context))
        elif type(context) is dict:
            ctx = dict(context)
        else:
            ctx = dict(mapping("context", context))
        ctx["library"] = LIBRARY
        message["context"] = ctx
    if integrations is None:
        message["integrations"] = {}
    else:
        message["integrations"] = (
            integrations if type(integrations) is dict else mapping("integrations", integrations)
        )
    message["timestamp"] = now_timestamp() if timestamp is None else format_timestamp(timestamp)
    if message_id is None:
        message["messageId"] = new_message_id()
    else:
        if isinstance(message_id, str):
            mid = message_id if type(message_id) is str else str.__str__(message_id)
        elif isinstance(message_id, (int, UUID)) and not isinstance(message_id, bool):
            mid = _plain_text(message_id)
        else:
            raise ValidationError(
                "message_id", f"must be a string or a UUID, not {type(message_id).__name__}"
            )
        if not mid or len(mid) > MAX_MESSAGE_ID_LENGTH:
            raise ValidationError(
                "message_id", f"must be 1 to {MAX_MESSAGE_ID_LENGTH} characters (got {len(mid)})"
            )
        message["messageId"] = mid
    return message


# The fields of each type besides the common ones (see ``prepare_common``), validated, in
# wire order. ``Calls`` (``_base_client``) makes a message as
# ``prepare_common(<type>_fields(...), user_id, anonymous_id, ...)``.


def identify_fields(traits: Any) -> Message:
    """An ``identify`` message's own fields: who the user is (``traits``)."""
    return {"type": "identify", "anonymousId": None, "traits": mapping("traits", traits)}


def track_fields(event: Any, properties: Any) -> Message:
    """A ``track`` message's own fields: what the user did (``event`` and ``properties``)."""
    return {
        "type": "track",
        "event": event if type(event) is str and event else text("event", event, True),
        "anonymousId": None,
        "properties": properties if type(properties) is dict else mapping("properties", properties),
    }


def view_fields(kind: str, category: Any, name: Any, properties: Any) -> Message:
    """A ``page`` (web page) or ``screen`` (app screen) message's own fields."""
    return {
        "type": kind,
        "name": text("name", name, required=False),
        "category": text("category", category, required=False),
        "anonymousId": None,
        "properties": mapping("properties", properties),
    }


def group_fields(group_id: Any, traits: Any) -> Message:
    """A ``group`` message's own fields: the group (``group_id``) and its ``traits``."""
    group = coerce_id("group_id", group_id)
    if group is None:
        raise ValidationError("group_id", "is required")
    return {
        "type": "group",
        "groupId": group,
        "anonymousId": None,
        "traits": mapping("traits", traits),
    }


def alias_fields(previous_id: Any, user_id: Any) -> Message:
    """An ``alias`` message's own fields: ``previous_id`` (``user_id`` is required too)."""
    previous = coerce_id("previous_id", previous_id)
    if previous is None:
        raise ValidationError("previous_id", "is required")
    if coerce_id("user_id", user_id) is None:
        raise ValidationError("user_id", "is required for alias")
    return {"type": "alias", "previousId": previous, "anonymousId": None}


# -- messages received in wire form (the collector) ------------------------------------

# The field each type needs besides an identity, in wire names (alias needs userId too).
REQUIRED_WIRE_FIELD = {"track": "event", "group": "groupId", "alias": "previousId"}
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")
_WIRE_TYPES = frozenset(MESSAGE_TYPES)


def check_wire_message(message: Mapping[str, Any]) -> tuple[str, Optional[str], Optional[str]]:
    """Check a message received in wire form by the rules the builders above apply.

    Returns ``(type, userId, anonymousId)`` with the ids as text. Raises ValidationError
    whose ``field`` is the wire name and whose ``problem`` is a sentence naming it.
    """
    get = message.get
    kind = get("type")
    if (type(kind) is not str or kind not in _WIRE_TYPES) and kind not in MESSAGE_TYPES:
        if kind is None:
            raise ValidationError("type", "missing 'type'")
        raise ValidationError(
            "type", f"unknown type {kind!r}, expected one of {', '.join(MESSAGE_TYPES)}"
        )
    # Ids are non-empty text or absent in nearly every message: test that first (the collector
    # checks every message it receives), and let wire_id judge anything else.
    user_id = get("userId")
    if user_id is not None and (type(user_id) is not str or not user_id):
        user_id = wire_id(message, "userId")
    anonymous_id = get("anonymousId")
    if anonymous_id is not None and (type(anonymous_id) is not str or not anonymous_id):
        anonymous_id = wire_id(message, "anonymousId")
    if kind == "alias" and user_id is None:
        raise ValidationError("userId", "alias requires 'userId'")
    if user_id is None and anonymous_id is None:
        raise ValidationError("userId", "missing both 'userId' and 'anonymousId'")
    required = REQUIRED_WIRE_FIELD.get(kind)
    if required is not None:
        value = get(required)
        if (type(value) is not str or not value) and wire_id(
            message, required, numbers=required != "event"
        ) is None:
            raise ValidationError(required, f"{kind} requires {required!r}")
    for name in _OBJECT_FIELDS:
        value = get(name)
        if value is not None and type(value) is not dict and not isinstance(value, Mapping):
            raise ValidationError(name, f"{name!r} must be an object")
    message_id = get("messageId")
    if message_id is not None:
        if not isinstance(message_id, str) or not message_id:
            raise ValidationError("messageId", "'messageId' must be a non-empty string")
        if len(message_id) > MAX_MESSAGE_ID_LENGTH:
            raise ValidationError(
                "messageId", f"'messageId' is longer than {MAX_MESSAGE_ID_LENGTH} characters"
            )
    return kind, user_id, anonymous_id


def wire_id(message: Mapping[str, Any], name: str, *, numbers: bool = True) -> Optional[str]:
    """An id field of a received message as text; ``None`` when absent, null or empty."""
    value = message.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValidationError(name, f"{name!r} must be a string")


# -- messages sent in wire form (``Client.forward``) -----------------------------------

# RFC 3339 text, the form every Segment library sends: kept byte for byte when forwarded.
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-]\d\d:\d\d)")
_from_iso = dt.datetime.fromisoformat
# Set when a message is sent, not by its author: the sending client's own apply.
_SENDER_FIELDS = ("sentAt", "writeKey")
# The field each type needs besides an identity (its usual shape: non-empty text).
_NEEDS_TEXT = REQUIRED_WIRE_FIELD
_NO_REQUIRED = frozenset(MESSAGE_TYPES) - frozenset(REQUIRED_WIRE_FIELD)
_OBJECT_TYPES = frozenset({dict, type(None)})


def prepare_wire_message(message: Any) -> Message:
    """A message given in wire form (``type`` and Segment's camelCase fields), ready to send.

    Checked by :func:`check_wire_message`'s rules (the collector's), plus ``timestamp``.
    Returns ``message`` itself when it is a dict that needs nothing, else a copy that
    differs only where a sender must decide: a missing ``messageId`` (a new one) or
    ``timestamp`` (now); a timestamp that is not RFC 3339 text (a datetime, a date, other
    ISO-8601 text) in wire form; and without ``sentAt`` and ``writeKey``, which the sending
    client sets. ``context`` (its ``library`` included), ``integrations`` and every other
    field are sent as given.

    One function, the usual shape checked inline: each Python call or bytecode here costs
    every forwarded message (``tracklane import`` sends 50,000 a second).
    """
    if type(message) is not dict:
        if not isinstance(message, Mapping):
            raise ValidationError(
                "message", f"must be a mapping (dict) in wire form, not {type(message).__name__}"
            )
        message = dict(message)
    # The usual shape (ids as text, objects as dicts) is accepted here: exactly what
    # check_wire_message accepts of it. Anything else is left to check_wire_message, which
    # raises naming the field or accepts a rarer shape (numeric ids).
    get = message.get
    kind = get("type")
    required = _NEEDS_TEXT.get(kind) if type(kind) is str else None
    user_id = get("userId")
    anonymous_id = get("anonymousId")
    message_id = get("messageId")
    if not (
        (required is not None or kind in _NO_REQUIRED)
        and (required is None or (type(get(required)) is str and get(required)))
        and (type(user_id) is str or user_id is None)
        and (type(anonymous_id) is str or anonymous_id is None)
        and (user_id or (anonymous_id and kind != "alias"))
        and (
            message_id is None
            or (type(message_id) is str and 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH)
        )
        and type(get("properties")) in _OBJECT_TYPES
        and type(get("traits")) in _OBJECT_TYPES
        and type(get("context")) in _OBJECT_TYPES
        and type(get("integrations")) in _OBJECT_TYPES
    ):
        check_wire_message(message)
        message = _ids_as_text(message)
    prepared: Message = message
    stamp = get("timestamp")
    if (
        type(stamp) is str
        and len(stamp) == 24
        and stamp[4:20:3] == "--T::."  # the characters at 4, 7, 10, 13, 16 and 19
        and stamp[23] == "Z"
        and stamp[20:23].isdigit()
        and stamp.isascii()
    ):
        # The usual shape, 2023-04-05T06:07:08.912Z, checked without the regular
        # expression (an eighth of this function's cost); the rest is fromisoformat's.
        try:
            _from_iso(stamp[:19])
        except ValueError:
            raise ValidationError("timestamp", f"not an ISO-8601 time: {stamp!r}") from None
    elif type(stamp) is not str or not _RFC3339.fullmatch(stamp):
        prepared = dict(message)
        prepared["timestamp"] = now_timestamp() if stamp is None else format_timestamp(stamp)
    else:
        try:  # a real date and time (no 2024-02-30): the shape is the regular expression's
            _from_iso(stamp[:19]) if stamp[-1] in "Zz" else parse_iso(stamp)
        except ValueError:
            raise ValidationError("timestamp", f"not an ISO-8601 time: {stamp[:60]!r}") from None
    if message_id is None:
        if prepared is message:
            prepared = dict(message)
        prepared["messageId"] = new_message_id()
    if "sentAt" in message or "writeKey" in message:
        if prepared is message:
            prepared = dict(message)
        for name in _SENDER_FIELDS:
            prepared.pop(name, None)
    return prepared


def _ids_as_text(message: Message) -> Message:
    """``message`` with integer ids as text, as the six calls send them (a copy if any).

    ``check_wire_message`` accepts an integer ``userId`` or ``anonymousId``; a warehouse
    column should never see 42 beside "u-1".
    """
    numeric = [name for name in ("userId", "anonymousId") if type(message.get(name)) is int]
    if not numeric:
        return message
    copy = dict(message)
    for name in numeric:
        copy[name] = int.__repr__(message[name])
    return copy
