"""A batch checked without building its messages' nested objects (msgspec).

Parsing a 100-event body into Python objects, checking it and encoding each message again
for storage cost about 6.5 µs per event (``_ingest.prepare_batch``), most of it making and
freeing the dicts, lists and strings of ``context`` and ``properties``, which the collector
stores as they are. Here msgspec reads each message's top-level fields, with the values of
the fields the rules do not look at kept as the bytes they came in (``msgspec.Raw``); the
rules of ``check_wire_message`` are applied to the fields they look at, and the message is
stored as msgspec writes its fields again, the raw ones verbatim. A third less CPU per
event (``bench/collector_check.py``; docs/performance.md).

``_ingest`` stays the reference: whatever this path would not handle as it does goes there,
one message (``_ingest.prepare_one``, given the message as the whole body's parse would
have given it) or the whole body (:func:`read_batch` gives ``None``):

- the whole body: not UTF-8, a ``\\u0000`` escape, 19 digits in a row or an exponent of three
  digits (a number JSON's readers may round, or find out of range), anything msgspec
  refuses (a message that is not an object of Segment's top-level fields among them), a
  ``batch`` that is not an array, a ``writeKey`` or ``sentAt`` that is not text;
- one message: over the size where the stored forms could fall on either side of the limit
  (``_SHALLOW_BYTES``), without a messageId, with a sentAt of its own, or that the rules
  refuse or read otherwise than as plain text.

A body stored here differs from the reference's in form only, and decodes to the same
values: nested objects keep the sender's spacing and number forms, and the top-level fields
come in a fixed order, once each (the last of a repeated key wins, as in every decoder the
collector uses).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Union

import msgspec

from tracklane._iso import parse_iso
from tracklane.collector._ingest import (
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_ID_LENGTH,
    Prepared,
    Rejected,
    Rejection,
    Times,
    may_hold_nul,
    message_id_of,
    prepare_one,
)
from tracklane.collector._json import loads
from tracklane.collector.storage import StoredMessage
from tracklane.messages import MESSAGE_TYPES

__all__ = ["ShallowBatch", "read_batch"]

_UNSET = msgspec.UNSET
_Unset = msgspec.UnsetType
_Raw = Union[msgspec.Raw, _Unset]


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Segment's top-level fields (any other sends the body to the reference path).

    Fields the rules read are decoded; the others stay raw. ``sentAt`` is last, where the
    reference path appends it.
    """

    type: Any = _UNSET
    event: Any = _UNSET
    name: _Raw = _UNSET
    category: _Raw = _UNSET
    userId: Any = _UNSET
    anonymousId: Any = _UNSET
    groupId: Any = _UNSET
    previousId: Any = _UNSET
    messageId: Any = _UNSET
    timestamp: Any = _UNSET
    originalTimestamp: _Raw = _UNSET
    receivedAt: _Raw = _UNSET
    context: _Raw = _UNSET
    properties: _Raw = _UNSET
    traits: _Raw = _UNSET
    integrations: _Raw = _UNSET
    channel: _Raw = _UNSET
    version: _Raw = _UNSET
    options: _Raw = _UNSET
    metadata: _Raw = msgspec.field(default=_UNSET, name="_metadata")
    writeKey: _Raw = _UNSET
    sentAt: Any = _UNSET


class _Envelope(msgspec.Struct, gc=False):
    batch: Union[List[_Message], _Unset] = _UNSET
    sentAt: Any = None
    writeKey: Any = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_encode = msgspec.json.Encoder().encode

# A message whose stored form could be over the limit in one path and not in the other is
# left to the reference path, which measures its compact encoding: numbers may take up to
# eight times the bytes here (``1e9,`` becomes ``1000000000.0,``), strings and spacing only
# fewer. Below an eighth of the limit, both forms are within it.
_SHALLOW_BYTES = MAX_MESSAGE_BYTES // 8
_WIRE_TYPES = frozenset(MESSAGE_TYPES)
_OPEN_BRACE = ord("{")
_NULL = msgspec.Raw(b"null")
# Digits and ``+`` made ``0``, ``E`` made ``e``: long numbers and exponents looked for in one
# text (``1E+400`` reads ``0e0000``; a ``+`` before two digits reads as a third, on the safe
# side). A table alone: bytes.translate with characters to delete costs three times as much.
_NUMBER_FORMS = bytes.maketrans(b"123456789+E", b"0000000000e")
_NINETEEN = b"0" * 19
_EXPONENT = b"0e000"
_MANTISSA = frozenset(b"0.")
_BEFORE_NUMBER = frozenset(b":[, \t\r")


class ShallowBatch:
    """A batch body read shallowly: its messages, ``writeKey`` and ``sentAt``."""

    __slots__ = ("messages", "sent_at", "sent_at_text", "write_key")

    def __init__(
        self,
        messages: List[_Message],
        write_key: Optional[str],
        sent_at: Optional[datetime],
        sent_at_text: Optional[str],
    ) -> None:
        self.messages = messages
        self.write_key = write_key
        self.sent_at = sent_at
        self.sent_at_text = sent_at_text

    def prepare(self, write_key: str, received_at: datetime) -> Prepared:
        """Check and build the rows, as ``_ingest.prepare_batch`` does.

        The usual message in one loop without calls of its own, as there: the rules of
        ``check_wire_message`` on the fields they read, its timestamp corrected as there,
        and its row built with the message encoded again (the last of a repeated key
        kept, as decoding keeps it). Any other message is encoded back to JSON and checked
        by ``_ingest.prepare_one``.
        """
        times = Times(received_at, self.sent_at, self.sent_at_text)
        sent_text = self.sent_at_text
        seen = times.seen
        received_text = times.received_text
        messages: List[StoredMessage] = []
        rejected: List[Rejection] = []
        append = messages.append
        encode = _encode
        unset = _UNSET
        null = _NULL
        for index, message in enumerate(self.messages):
            kind = message.type
            message_id = message.messageId
            user_id = message.userId
            anonymous_id = message.anonymousId
            event = message.event
            original = message.timestamp
            # properties, traits, context and integrations: absent, an object or null.
            context: Any = message.context
            properties: Any = message.properties
            traits: Any = message.traits
            integrations: Any = message.integrations
            if user_id is unset:
                user_id = None
            if anonymous_id is unset:
                anonymous_id = None
            if original is unset:
                original = None
            if (
                type(kind) is str
                and kind in _WIRE_TYPES
                and type(message_id) is str
                and message_id
                and len(message_id) <= MAX_MESSAGE_ID_LENGTH
                and message.sentAt is unset
                and (user_id is None or (type(user_id) is str and user_id))
                and (anonymous_id is None or (type(anonymous_id) is str and anonymous_id))
                and (user_id is not None or (anonymous_id is not None and kind != "alias"))
                and (
                    (type(event) is str and event)
                    if kind == "track"
                    else kind not in _REQUIRED or _has_text(_REQUIRED[kind](message))
                )
                and (context is unset or memoryview(context)[0] == _OPEN_BRACE or context == null)
                and (
                    properties is unset
                    or memoryview(properties)[0] == _OPEN_BRACE
                    or properties == null
                )
                and (traits is unset or memoryview(traits)[0] == _OPEN_BRACE or traits == null)
                and (
                    integrations is unset
                    or memoryview(integrations)[0] == _OPEN_BRACE
                    or integrations == null
                )
            ):
                timestamp: Optional[str] = received_text
                if original is not None:
                    timestamp = (
                        (seen.get(original) or times.corrected_text(original))
                        if type(original) is str
                        else None
                    )
                if timestamp is not None:
                    message.writeKey = unset  # never stored, as the reference path drops it
                    if sent_text is not None:
                        message.sentAt = sent_text
                    body = encode(message)
                    if len(body) <= _SHALLOW_BYTES:
                        append(
                            tuple.__new__(
                                StoredMessage,
                                (
                                    write_key,
                                    message_id,
                                    kind,
                                    user_id,
                                    anonymous_id,
                                    event if kind == "track" else None,
                                    received_text,
                                    timestamp,
                                    original,
                                    body.decode("utf-8"),
                                ),
                            )
                        )
                        continue
                    message.sentAt = unset  # (its writeKey stays out: the reference drops it)
            # The reference path, with the message as the whole body's parse gives it.
            parsed = loads(encode(message))
            try:
                append(prepare_one(parsed, write_key, times))
            except Rejected as exc:
                rejected.append(Rejection(index, message_id_of(parsed), str(exc)))
        return Prepared(messages, rejected)


def read_batch(raw: bytes) -> Optional[ShallowBatch]:
    """Read a ``{"batch": [...]}`` body shallowly; ``None`` when the reference path must."""
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if may_hold_nul(raw) or not _numbers_plain(raw):
        return None
    try:
        envelope = _decode_envelope(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    batch = envelope.batch
    write_key = envelope.writeKey
    sent_at_text = envelope.sentAt
    if batch is _UNSET or not (write_key is None or type(write_key) is str):
        return None
    if write_key is not None and "\x00" in write_key:
        return None
    sent_at = None
    if sent_at_text is not None:
        if type(sent_at_text) is not str:
            return None
        try:
            sent_at = parse_iso(sent_at_text)
        except ValueError:
            return None
    return ShallowBatch(batch, write_key or None, sent_at, sent_at_text)


def _numbers_plain(raw: bytes) -> bool:
    """Whether every number is shorter than 19 digits and has an exponent of two at most.

    Looked for in the text as a whole. A JSON number's exponent follows a digit, so its
    three digits read ``0e000``, as they may in a string too (a UUID's ``3e456``): it is a
    number only if digits and a point lead back to what may precede one.
    """
    digits = raw.translate(_NUMBER_FORMS)
    if _NINETEEN in digits:
        return False
    at = digits.find(_EXPONENT)
    while at >= 0:
        start = at
        while start and digits[start - 1] in _MANTISSA:
            start -= 1
        if start and digits[start - 1] == 0x2D:  # "-"
            start -= 1
        if not start or digits[start - 1] in _BEFORE_NUMBER:
            return False
        at = digits.find(_EXPONENT, at + 1)
    return True


def _has_text(value: Any) -> bool:
    return type(value) is str and bool(value)


_REQUIRED: Dict[str, Callable[[_Message], Any]] = {
    "group": lambda message: message.groupId,
    "alias": lambda message: message.previousId,
}
