"""The batch fast path (``_prepare_plain``) stores and refuses exactly what ``_prepare`` does."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracklane.collector import _ingest
from tracklane.collector._check import check_request
from tracklane.collector._ingest import (
    Prepared,
    Rejection,
    RequestError,
    may_hold_nul,
    prepare_batch,
)
from tracklane.collector._ingest_route import Answer
from tracklane.collector._json import loads
from tracklane.config import MAX_MESSAGE_BYTES

RECEIVED = datetime(2026, 11, 30, 10, 0, 0, 123000, tzinfo=timezone.utc)
SENT = "2026-11-30T09:59:59.000Z"


def _track(**fields: Any) -> Dict[str, Any]:
    message: Dict[str, Any] = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u-1",
        "messageId": "m-1",
        "timestamp": "2026-11-30T09:59:58.500Z",
        "properties": {"total": 1.5},
    }
    message.update(fields)
    return {name: value for name, value in message.items() if value is not _ABSENT}


_ABSENT = object()


def _sized(size: int) -> Dict[str, Any]:
    """A valid message whose JSON (as stored, before sentAt is added) is ``size`` bytes."""
    message = _track(properties={"big": ""})
    message["properties"]["big"] = "x" * (size - len(orjson.dumps(message)))
    assert len(orjson.dumps(message)) == size
    return message


# Valid messages of every shape, and each way one can be refused or be unusual.
MESSAGES: List[Any] = [
    _track(),
    _track(timestamp=_ABSENT),
    _track(timestamp=None),
    _track(timestamp="2026-11-30T10:59:58+01:00"),
    _track(timestamp="yesterday"),
    _track(timestamp=12),
    _track(timestamp=["2026"]),
    _track(timestamp="9999-12-31T23:59:59Z"),
    _track(timestamp="0001-01-01T00:30:00+01:00"),
    _track(timestamp="0001-01-01T00:00:00Z"),
    _track(timestamp="2026-11-30 09:00:00,5"),
    _track(timestamp="2026-11-30T04:00:00-0530"),
    _track(timestamp="2026-02-30T00:00:00Z"),
    _track(timestamp=""),
    _track(sentAt=SENT),
    _track(sentAt="2026-11-30T09:00:00Z"),
    _track(sentAt=None),
    _track(sentAt="soon"),
    _track(messageId=_ABSENT),
    _track(messageId=None),
    _track(messageId=""),
    _track(messageId=7),
    _track(messageId="m" * 100),
    _track(messageId="m" * 101),
    _track(messageId="m\x00"),
    _track(writeKey="secret"),
    _track(type="page", event=_ABSENT, name="Home"),
    _track(type="identify", event=_ABSENT, traits={"plan": "pro"}),
    _track(type="group", event=_ABSENT, groupId="g-1"),
    _track(type="group", event=_ABSENT, groupId=42),
    _track(type="group", event=_ABSENT),
    _track(type="alias", event=_ABSENT, previousId="p-1"),
    _track(type="alias", event=_ABSENT, userId=_ABSENT, anonymousId="a", previousId="p"),
    _track(type="screen", event=_ABSENT, anonymousId="a-1", userId=_ABSENT),
    _track(type="nope"),
    _track(type=_ABSENT),
    _track(event=_ABSENT),
    _track(event=3),
    _track(event=""),
    _track(userId=_ABSENT),
    _track(userId=123, anonymousId="a"),
    _track(userId="", anonymousId="a"),
    _track(userId=True),
    _track(userId="u\x00"),
    _track(event="E\x00"),
    _track(properties={"note": "a\x00b"}),
    _track(properties=[1]),
    _track(context="web"),
    _track(integrations=None),
    _track(properties={"n": 2**70}),
    _track(properties={"s": "x\ud800"}),
    _track(userId="x\udfff"),
    _track(properties={"big": "x" * MAX_MESSAGE_BYTES}),
    *(_sized(MAX_MESSAGE_BYTES + extra) for extra in (-1, 0, 1)),  # the limit, to the byte
    "not an object",
    None,
    [1, 2],
    {},
]


def _outcome(prepared: Prepared) -> Tuple[Any, ...]:
    return (
        [tuple(row) for row in prepared.messages],
        [(r.index, r.message_id, r.reason) for r in prepared.rejected],
    )


def _both(
    payload: Dict[str, Any], nul_free: bool, monkeypatch: pytest.MonkeyPatch
) -> Tuple[Any, Any]:
    """The outcome of prepare_batch, then of each message through _prepare alone."""
    fast_payload = copy.deepcopy(payload)
    with monkeypatch.context() as patch:
        patch.setattr(_ingest, "new_message_id", iter(range(10**6)).__next__)
        fast = _outcome(prepare_batch(fast_payload, "key", RECEIVED, nul_free=nul_free))
    slow_payload = copy.deepcopy(payload)
    with monkeypatch.context() as patch:
        patch.setattr(_ingest, "new_message_id", iter(range(10**6)).__next__)
        slow = _outcome(_prepared_slowly(slow_payload))
    # The messages themselves end alike too (the debugger shows stored bodies).
    assert fast_payload == slow_payload
    return fast, slow


def _prepared_slowly(payload: Dict[str, Any]) -> Prepared:
    """prepare_batch's outcome as it was before the fast path: every message by _prepare."""
    sent_at = _ingest._time_field(payload, "sentAt")
    times = _ingest._Times(RECEIVED, sent_at, payload["sentAt"] if sent_at else None)
    prepared = Prepared([], [])
    for index, message in enumerate(payload["batch"]):
        try:
            prepared.messages.append(_ingest._prepare(message, "key", times, None))
        except _ingest._Rejected as exc:
            rejection = Rejection(index, _ingest._message_id_of(message), str(exc))
            prepared.rejected.append(rejection)
    return prepared


def _nul_free(payload: Dict[str, Any]) -> bool:
    """What ``not may_hold_nul`` says of the payload's JSON text."""
    return not may_hold_nul(json.dumps(payload).encode())


@pytest.mark.parametrize("sent_at", [SENT, None, _ABSENT])
def test_each_message_alone_has_the_same_outcome_on_both_paths(
    sent_at: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every valid, unusual or refused message gives the same row or the same refusal."""
    for message in MESSAGES:
        payload: Dict[str, Any] = {"batch": [message]}
        if sent_at is not _ABSENT:
            payload["sentAt"] = sent_at
        for nul_free in {_nul_free(payload), False}:
            fast, slow = _both(payload, nul_free, monkeypatch)
            assert fast == slow, message


def test_a_mixed_batch_has_the_same_outcome_on_both_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of all the cases, shared timestamps included, stores and refuses alike."""
    batch = [dict(m) if isinstance(m, dict) else m for m in MESSAGES * 2]
    payload = {"batch": batch, "sentAt": SENT}
    fast, slow = _both(payload, False, monkeypatch)
    assert fast == slow
    assert len(fast[0]) > 20  # both outcomes are well represented
    assert len(fast[1]) > 20


_TEXT = st.one_of(
    st.sampled_from(["u", "", "2026-11-30T09:59:58Z", "a\x00", "x\ud800", "track", SENT]),
    st.text(max_size=8),
)
_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
    st.lists(_TEXT, max_size=2),
    st.dictionaries(_TEXT, _TEXT, max_size=2),
)
_FIELDS = st.sampled_from(
    [
        "type",
        "userId",
        "anonymousId",
        "messageId",
        "event",
        "groupId",
        "previousId",
        "timestamp",
        "sentAt",
        "writeKey",
        "properties",
        "traits",
        "context",
        "integrations",
    ]
)


# Batches of 1 to 4 valid messages, each with up to 3 fields changed at random.
CHANGED_MESSAGES = st.lists(
    st.tuples(st.sampled_from(MESSAGES[:28]), st.dictionaries(_FIELDS, _VALUE, max_size=3)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(CHANGED_MESSAGES, st.sampled_from([SENT, None, "bad"]))
def test_random_messages_have_the_same_outcome_on_both_paths(
    cases: List[Tuple[Any, Dict[str, Any]]], sent_at: Optional[str]
) -> None:
    """Valid messages with random fields changed give the same outcome on both paths."""
    batch = [{**base, **changes} for base, changes in cases]
    payload: Dict[str, Any] = {"batch": batch, "sentAt": sent_at}
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            fast, slow = _both(payload, _nul_free(payload), monkeypatch)
        except (RequestError, _ingest._Rejected):
            return  # a bad batch sentAt refuses the whole request, before either path
        assert fast == slow


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a":"b"}', False),
        (b'{"a":"\\\\"}', False),
        (b'{"a":"\\u0001"}', False),
        (b'{"a":"\\u0000"}', True),
        (b'{"a":"\\\\u0000"}', True),  # an escaped backslash, then text: looked at closer
        (b'{"a\\u0000":1}', True),
    ],
)
def test_may_hold_nul(body: bytes, expected: bool) -> None:
    """A body may hold a NUL exactly when it has the escape; parsing agrees when it has none."""
    assert may_hold_nul(body) is expected
    if not expected:
        assert "\\u0000" not in json.dumps(loads(body))


def test_check_request_refuses_a_nul_id_in_a_batch_and_keeps_a_nul_in_properties() -> None:
    """Through check_request: a NUL userId is refused by name, a NUL property is stored."""
    body = (
        b'{"batch":[{"type":"track","event":"E","userId":"u\\u0000","messageId":"a"},'
        b'{"type":"track","event":"E","userId":"u","messageId":"b","properties":{"p":"\\u0000"}}]}'
    )
    checked = check_request(body, "key", None, RECEIVED, frozenset())
    assert not isinstance(checked, Answer)
    assert [row.message_id for row in checked.messages] == ["b"]
    assert '"p":"\\u0000"' in checked.messages[0].body
    assert [(r.index, r.reason) for r in checked.rejected] == [
        (0, "'userId' contains a NUL character (\\u0000), not allowed there")
    ]


def test_usual_messages_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid messages with ids, own timestamps and no sentAt never reach _prepare."""
    calls: List[object] = []
    slow = _ingest._prepare

    def counted(message: Any, *rest: Any) -> Any:
        calls.append(message)
        return slow(message, *rest)

    monkeypatch.setattr(_ingest, "_prepare", counted)
    batch = [_track(messageId=f"m-{n}", timestamp=f"2026-11-30T09:59:5{n}Z") for n in range(5)]
    batch.append(_track(messageId=_ABSENT))
    prepared = prepare_batch({"batch": batch, "sentAt": SENT}, "key", RECEIVED, nul_free=True)
    assert len(prepared.messages) == 6
    assert not prepared.rejected
    assert calls == [batch[5]]  # only the message without a messageId
    assert all('"sentAt":"' + SENT + '"' in row.body for row in prepared.messages)
