"""The call's hot path: message ids, and the encode that tries the faster orjson options first."""

from __future__ import annotations

import datetime as dt
import enum
import re
import tracemalloc
import uuid
from decimal import Decimal
from typing import Any, List, Optional

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import strategies as s
import tracklane
from tracklane import messages
from tracklane._encode import ORJSON_OPTIONS, default_for, encode, encode_slowly
from tracklane.messages import new_message_id

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class Key(str):
    """A str subclass used as a dict key."""


class Plan(enum.Enum):
    GOLD = "gold"


def encode_as_before(value: Any, user_default: Optional[Any] = None) -> bytes:
    """The encoding before the fast options: full options at once, then the slow path."""
    try:
        return orjson.dumps(value, default=default_for(user_default), option=ORJSON_OPTIONS)
    except (TypeError, ValueError, RecursionError):
        return encode_slowly(value, user_default)


def test_message_ids_are_canonical_version4_uuids_and_unique() -> None:
    """100,000 ids: each a lowercase RFC 4122 version-4 UUID in canonical form, none repeated."""
    ids = [new_message_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[::97] + ids[-3:]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert all(CANONICAL_UUID.fullmatch(text) for text in ids)


def test_message_ids_use_every_random_bit() -> None:
    """Apart from the six fixed version and variant bits, every bit of the id varies."""
    seen_one = 0
    seen_zero = 0
    for _ in range(2_000):
        bits = uuid.UUID(new_message_id()).int
        seen_one |= bits
        seen_zero |= ~bits
    fixed = (0xF000 << 64) | (0xC000 << 48)
    assert (seen_one & seen_zero) & ~fixed == ((1 << 128) - 1) & ~fixed


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(s.values, s.payloads),
    user_default=st.sampled_from([None, repr]),
)
def test_encode_gives_the_same_bytes_as_the_full_options(value: Any, user_default: Any) -> None:
    """Whatever the value (non-text keys, huge ints, cycles), the bytes are those of before."""
    assert encode(value, user_default) == encode_as_before(value, user_default)


def test_track_with_non_text_keys_sends_the_bytes_of_before(make_client: Any, server: Any) -> None:
    """Int, enum and str-subclass keys (which the fast options refuse) go out as before."""
    client = make_client()
    properties = {
        1: "one",
        Plan.GOLD: {Key("nested"): Decimal("1.50")},
        Key("plain"): [1, 2.5, None],
        "text": "ok",
    }
    ok, message = client.track("user-1", "Keys", properties)
    assert ok
    assert client.flush(timeout=5)
    (request,) = server.requests
    expected = encode_as_before(message)
    assert expected in request.body
    assert b'"1":"one","gold":{"nested":"1.50"},"plain":[1,2.5,null]' in expected


@pytest.mark.parametrize("millis", [0, 7, 42, 500, 999])
def test_call_timestamps_carry_the_milliseconds_zero_padded(
    monkeypatch: pytest.MonkeyPatch, millis: int
) -> None:
    """now_timestamp() writes UTC with three-digit milliseconds and +00:00, as datetime does."""
    second = 1_764_460_800 + millis  # a different second each time: no cached prefix reused
    moment = second + millis / 1000 + 0.0004
    monkeypatch.setattr(messages.time, "time", lambda: moment)
    expected = dt.datetime.fromtimestamp(second, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    assert messages.now_timestamp() == f"{expected}.{millis:03d}+00:00"


def test_queued_messages_are_exact_size_copies_of_the_encoding() -> None:
    """A queued message costs its own size, not orjson's 4 KB working buffer (traced memory)."""
    client = tracklane.Client("key", send=False)
    queued: List[bytes] = []
    client._put = lambda data: queued.append(data) is None
    properties = {"total": Decimal("129.99"), "sku": "A-1"}
    client.track("user-1", "Order Completed", properties)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2_000):
            client.track("user-1", "Order Completed", properties)
        per_message = (tracemalloc.get_traced_memory()[0] - before) / 2_000
    finally:
        tracemalloc.stop()
    assert all(type(data) is bytes for data in queued)
    assert orjson.loads(queued[-1])["properties"] == {"total": "129.99", "sku": "A-1"}
    assert per_message < len(queued[-1]) + 200  # the bytes, their header, the list slot
