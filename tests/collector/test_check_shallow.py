"""Batches read shallowly (``_shallow``) store and refuse exactly what the full parse does.

``check_request`` tries ``_shallow`` first for batches; ``check_request_fully`` parses every
message whole and stays the reference. Both are run on the same bodies, written compactly,
with spaces (as ``json.dumps`` writes them, non-ASCII escaped), indented, and by hand where a case
needs it (repeated keys, numbers JSON readers treat differently). Outcomes must be equal:
the same answer, or the same rows (bodies compared as the values they decode to, since
only their form may differ) and the same refusals.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracklane.collector import _check, _ingest, _shallow
from tracklane.collector._check import check_request, check_request_fully
from tracklane.collector._ingest import Prepared
from tracklane.collector._ingest_route import Answer
from tracklane.collector._json import loads_stored
from tracklane.collector.outbox import _wire_rows
from tracklane.collector.storage import EventFilter, Storage
from tracklane.config import MAX_MESSAGE_BYTES
from tracklane.messages import REQUIRED_WIRE_FIELD

from .test_check_fast_path import _ABSENT, CHANGED_MESSAGES, MESSAGES, RECEIVED, SENT, _track

Encode = Callable[[Any], bytes]


def _compact(value: Any) -> bytes:
    return orjson.dumps(value)


def _spaced(value: Any) -> bytes:
    """As Python's json module writes by default: spaces after , and :, non-ASCII escaped."""
    return json.dumps(value).encode("ascii")


def _indented(value: Any) -> bytes:
    """Pretty-printed, newlines and all, non-ASCII kept."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")


FORMS: Dict[str, Encode] = {"compact": _compact, "spaced": _spaced, "indented": _indented}


def _outcome(result: Any) -> Any:
    if isinstance(result, Answer):
        return result
    assert isinstance(result, Prepared)
    rows = [(tuple(row[:9]), loads_stored(row.body)) for row in result.messages]
    return rows, [(r.index, r.message_id, r.reason) for r in result.rejected]


def _both(
    raw: bytes,
    header_key: Optional[str] = "key",
    write_keys: FrozenSet[str] = frozenset(),
) -> Tuple[Any, Any]:
    """The outcome of check_request, then of check_request_fully, on ``raw``."""
    outcomes = []
    for check in (check_request, check_request_fully):
        with pytest.MonkeyPatch.context() as patch:  # the same new messageIds for both
            patch.setattr(_ingest, "new_message_id", iter(range(10**6)).__next__)
            outcomes.append(_outcome(check(raw, header_key, None, RECEIVED, write_keys)))
    return outcomes[0], outcomes[1]


def _encodable(message: Any) -> bool:
    """Whether orjson can write the message (lone surrogates and huge ints it cannot)."""
    try:
        orjson.dumps(message)
    except orjson.JSONEncodeError:
        return False
    return True


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("sent_at", [SENT, None, _ABSENT, "soon", 5])
def test_each_message_alone_has_the_same_outcome(form: str, sent_at: Any) -> None:
    """Every valid, unusual or refused message, in each form, gives the same outcome."""
    for message in MESSAGES:
        payload: Dict[str, Any] = {"batch": [message]}
        if sent_at is not _ABSENT:
            payload["sentAt"] = sent_at
        if form != "spaced" and not _encodable(payload):
            continue
        fast, reference = _both(FORMS[form](payload))
        assert fast == reference, message


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_mixed_batch_has_the_same_outcome(form: str) -> None:
    """A batch of all the cases (those both encoders can write) stores and refuses alike."""
    batch = [m for m in MESSAGES * 2 if _encodable(m)]
    fast, reference = _both(FORMS[form]({"batch": batch, "sentAt": SENT}))
    assert fast == reference
    assert isinstance(fast, tuple)
    assert len(fast[0]) > 20
    assert len(fast[1]) > 20


@settings(max_examples=300, deadline=None)
@given(CHANGED_MESSAGES, st.sampled_from([SENT, None, "bad"]), st.sampled_from(sorted(FORMS)))
def test_random_messages_have_the_same_outcome(
    cases: List[Tuple[Any, Dict[str, Any]]], sent_at: Optional[str], form: str
) -> None:
    """Valid messages with random fields changed give the same outcome on both paths."""
    payload = {"batch": [{**base, **changes} for base, changes in cases], "sentAt": sent_at}
    if form != "spaced" and not _encodable(payload):
        return
    fast, reference = _both(FORMS[form](payload))
    assert fast == reference


_ONE = (
    b'{"type":"track","event":"E","userId":"u","messageId":"m",'
    b'"timestamp":"2026-11-30T09:59:58.500Z","properties":%s}'
)


@pytest.mark.parametrize(
    "raw",
    [
        # Repeated keys: the last one counts, at the top and deeper down.
        b'{"batch":[{"type":"identify","type":"track","event":"E","userId":"u","messageId":"m",'
        b'"timestamp":"2026-11-30T09:00:00Z","timestamp":"2026-11-30T09:59:00Z",'
        b'"integrations":{"All":false},"integrations":{"All":true,"All":false}}]}',
        b'{"batch":[{"type":"track"}],"batch":[' + _ONE % b"{}" + b"]}",
        b'{"sentAt":"2026-11-30T09:00:00Z","batch":['
        + _ONE % b"{}"
        + b'],"sentAt":"%s"}' % SENT.encode(),
        # Numbers: exponents, wide integers, long fractions, out of range, at any depth.
        b'{"batch":[' + _ONE % b'{"a":1e5,"b":-2.5E-7,"c":1E+2,"d":[0.1e1]}' + b"]}",
        b'{"batch":[' + _ONE % b'{"n":123456789012345678901234567890}' + b"]}",
        b'{"batch":[' + _ONE % b'{"f":0.123456789012345678901234567890}' + b"]}",
        b'{"batch":[' + _ONE % b'{"x":1e400}' + b"]}",
        b'{"batch":[' + _ONE % b'{"x":[-1E+309]}' + b"]}",
        b'{"batch":[' + _ONE % b'{"x":1e-400}' + b"]}",
        b'{"batch":[' + _ONE % b'{"x":"1e400, 2e999"}' + b"]}",  # text, not numbers
        b'{"batch":[' + _ONE % (b'{"x":' + b"9" * 5000 + b"}") + b"]}",
        b'{"batch":[], "n": 1e400}',
        b'{"batch":[' + _ONE % b"{}" + b'], "n": 123456789012345678901}',
        # Text: escapes, non-ASCII, NUL, lone surrogates, bytes that are not UTF-8.
        b'{"batch":[' + _ONE % b'{"e":"\\u00e9\\/\\"","k":"caf\xc3\xa9"}' + b"]}",
        b'{"batch":[' + _ONE % b'{"nul":"a\\u0000b"}' + b"]}",
        b'{"batch":[' + _ONE % b'{"s":"\\ud800"}' + b"]}",
        b'{"batch":[' + _ONE % b"{}" + b'],"other":"\xff"}',
        b'{"batch":[' + _ONE % b'{"s":"\xed\xa0\x80"}' + b"]}",
        # Layout: newlines, tabs, whitespace around everything.
        b'{"batch":[\n' + _ONE % b"{}" + b"\n]}",
        b' \t{ "batch" :\t[ ' + _ONE % b'{ "a" : [ 1 , 2 ] }' + b" ] } \r",
        # Shapes the rules refuse, or read otherwise than as plain text.
        b'{"batch":[' + _ONE % b"[1]" + b"]}",
        b'{"batch":[' + _ONE % b"null" + b"]}",
        b'{"batch":[' + _ONE % b'"text"' + b"]}",
        b'{"batch":[{"type":"track","event":"E","userId":7,"messageId":"m"}]}',
        b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"m","custom":1}]}',
        b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"m","writeKey":"w"}]}',
        b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"m","sentAt":null}]}',
        b'{"batch":[{"type":"track","event":"E","userId":"u","messageId":"m",'
        b'"_metadata":{"bundled":[]},"channel":"server","version":2,"name":{"n":1}}]}',
        b'{"batch":[5, "x", null, [], {}]}',
        b'{"batch":{}}',
        b'{"batch":null}',
        b'{"nobatch":[]}',
        b"[]",
        b"",
        b"   ",
        b'{"batch":[]}',
        b'{"batch":[]} x',
        b'{"batch":[' + _ONE % b"{}" + b'],"writeKey":5}',
        b'{"batch":[' + _ONE % b"{}" + b'],"writeKey":"a\\u0000"}',
        b'{"batch":[' + _ONE % (b"[" * 300 + b"]" * 300) + b"]}",
        b'{"batch":[' + _ONE % (b'{"a":' * 1200 + b"1" + b"}" * 1200) + b"]}",
    ],
)
def test_bodies_written_by_hand_have_the_same_outcome(raw: bytes) -> None:
    """Repeated keys, numbers, text and layouts the encoders never write: the same outcome."""
    fast, reference = _both(raw)
    assert fast == reference


@pytest.mark.parametrize(
    ("header_key", "body_key", "write_keys"),
    [
        ("key", None, frozenset()),
        (None, "key", frozenset({"key"})),
        (None, "", frozenset({"key"})),
        (None, None, frozenset({"key"})),
        ("other", "key", frozenset({"key"})),
        (None, "other", frozenset({"key"})),
    ],
)
def test_write_keys_are_read_and_checked_alike(
    header_key: Optional[str], body_key: Optional[str], write_keys: FrozenSet[str]
) -> None:
    """The header's key, else the body's, authorizes the batch, as the full parse reads it."""
    payload: Dict[str, Any] = {"batch": [_track()]}
    if body_key is not None:
        payload["writeKey"] = body_key
    fast, reference = _both(_compact(payload), header_key, write_keys)
    assert fast == reference


def _messages_of_size(size: int, number: bytes) -> bytes:
    """A batch of one message of about ``size`` bytes, its properties ``number`` repeated."""
    bare = len(_ONE % b'{"n":[]}')
    count = (size - bare) // (len(number) + 1)
    message = _ONE % (b'{"n":[' + b",".join([number] * count) + b"]}")
    assert size - len(number) - 1 <= len(message) <= size
    return b'{"batch":[' + message + b"]}"


@pytest.mark.parametrize("number", [b"1", b"1e15", b"5E3"])
@pytest.mark.parametrize(
    "size",
    [
        MAX_MESSAGE_BYTES // 8 - 40,
        MAX_MESSAGE_BYTES // 8 + 40,
        MAX_MESSAGE_BYTES // 3,
        MAX_MESSAGE_BYTES - 20,
        MAX_MESSAGE_BYTES + 20,
    ],
)
def test_sizes_near_the_limits_have_the_same_outcome(size: int, number: bytes) -> None:
    """Numbers that take more bytes once parsed and written again: the same limit holds."""
    fast, reference = _both(_messages_of_size(size, number))
    assert fast == reference


def test_usual_batches_never_parse_their_messages_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compact or spaced, a batch of the usual messages is checked without the full parse."""
    calls: List[object] = []

    def counted(*args: Any) -> Any:
        calls.append(args)
        raise AssertionError("the full parse ran")

    monkeypatch.setattr(_check, "check_request_fully", counted)
    monkeypatch.setattr(_shallow, "prepare_one", counted)
    batch = [
        _track(messageId=f"m-{n}", timestamp=f"2026-11-30T09:59:5{n}Z", anonymousId="a")
        for n in range(5)
    ]
    batch.append(_track(type="identify", event=_ABSENT, traits={"plan": "pro"}, context={}))
    batch.append(_track(type="group", event=_ABSENT, groupId="g", integrations=None))
    batch.append(_track(type="alias", event=_ABSENT, previousId="p", writeKey="w"))
    for encode in FORMS.values():
        checked = check_request(
            encode({"batch": batch, "sentAt": SENT}), "k", None, RECEIVED, frozenset()
        )
        assert isinstance(checked, Prepared)
        assert len(checked.messages) == len(batch)
        assert not checked.rejected
        assert all(f'"sentAt":"{SENT}"' in row.body for row in checked.messages)
        assert all('"writeKey"' not in row.body for row in checked.messages)
    assert not calls


def test_stored_bodies_read_back_and_route_as_the_full_parse_stores_them(tmp_path: Path) -> None:
    """A pretty-printed batch stored by each path reads back, and is routed, as the same events.

    The SQLite outbox joins the wire forms it reads with newlines: SQLite writes them again
    compact, whatever the spacing stored.
    """
    batch = [
        _track(messageId=f"m-{n}", properties={"n": n, "note": "caf\u00e9", "f": 1e-5})
        for n in range(20)
    ]
    batch.append(_track(messageId="m-x", timestamp=_ABSENT, integrations={"All": False, "X": {}}))
    raw = _indented({"batch": batch, "sentAt": SENT})
    assert _shallow.read_batch(raw) is not None
    results = []
    for number, check in enumerate((check_request, check_request_fully)):
        checked = check(raw, "key", None, RECEIVED, frozenset())
        assert isinstance(checked, Prepared)
        assert not checked.rejected
        storage = Storage(tmp_path / f"events-{number}.db")
        try:
            assert storage.insert(checked.messages) == len(batch)
            events = storage.query(EventFilter(), 100)
            with sqlite3.connect(storage.path) as db:
                wires = [
                    (event_id, key, message_id, orjson.loads(wire), integrations)
                    for event_id, key, message_id, wire, integrations in _wire_rows(db, 1, 100)
                ]
        finally:
            storage.close()
        results.append((events, wires))
    assert results[0] == results[1]
    assert len(results[0][1]) == len(batch)


def test_the_received_time_is_the_same_on_both_paths() -> None:
    """The stored times come from the same clock reading, whichever path checks the batch."""
    moment = datetime(2026, 11, 30, 10, 0, 0, 999999, tzinfo=timezone.utc)
    raw = _compact({"batch": [_track(timestamp=_ABSENT)], "sentAt": SENT})
    fast = check_request(raw, "k", None, moment, frozenset())
    reference = check_request_fully(raw, "k", None, moment, frozenset())
    assert isinstance(fast, Prepared)
    assert isinstance(reference, Prepared)
    assert fast.messages[0][:9] == reference.messages[0][:9]


@pytest.mark.parametrize(
    "properties",
    [
        b'{"a":1e5,"b":-2.5E-7,"c":1E+2,"d":[0.1e1],"e":12345678901234567}',
        b'{"ids":["3e456789-0e00-4e01-8e23-1e4567890abc","x-9e999","e000","0e000"]}',
        b'{"t":"1e400 in text","u":"a,1e400 b"}',
    ],
)
def test_ordinary_numbers_and_lookalike_text_stay_on_the_shallow_path(properties: bytes) -> None:
    """Numbers every reader takes alike, and ids that look like exponents, need no full parse."""
    raw = b'{"batch":[' + _ONE % properties + b"]}"
    if b"1e400" in properties and b"a,1e400" in properties:
        # ",1e400" inside a string looks like a number to the scan: the full parse decides.
        assert _shallow.read_batch(raw) is None
    else:
        assert _shallow.read_batch(raw) is not None
    fast, reference = _both(raw)
    assert fast == reference


def test_every_required_field_is_checked() -> None:
    """The shallow check knows each type's required field (track's event, inline)."""
    assert set(_shallow._REQUIRED) | {"track"} == set(REQUIRED_WIRE_FIELD)
