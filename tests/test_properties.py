"""Property tests: any value in any argument of any call; nothing raises but ValidationError,
whatever is queued arrives as strict JSON, and the counters always add up."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import inspect
import json
import re
import socket
import sys
import uuid
from decimal import Decimal
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import strategies as s
import tracklane
from helpers import RecordingServer
from tracklane._encode import encode

# Timestamps on the wire: three fractional digits and an offset of Z or +HH:MM.
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")

# Each call's parameters, read from Client itself (test_compat checks them against segment's).
SIGNATURES: Dict[str, Tuple[str, ...]] = {
    method: tuple(inspect.signature(getattr(tracklane.Client, method)).parameters)[1:]
    for method in ("alias", "group", "identify", "page", "screen", "track")
}

MAPPING_ARGS = ("traits", "properties", "context", "integrations")
ID_ARGS = ("user_id", "anonymous_id", "group_id", "previous_id")
TEXT_ARGS = ("event", "name", "category")

PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    # No explain phase: it replays each failure many times more, which a failing run on two
    # cores cannot afford within its time budget; the shrunk example is explanation enough.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# -- strict JSON --------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _check_text(value: Any) -> None:
    """Every string and key is real Unicode (no lone surrogates smuggled in as escapes)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                key.encode("utf-8")
                stack.append(child)


def _parse_int(digits: str) -> Any:
    # int() refuses more than sys.get_int_max_str_digits() digits; Decimal compares exactly.
    return int(digits) if len(digits) < 4000 else Decimal(digits)


def strict_loads(raw: bytes) -> Any:
    """Parse ``raw`` as strict RFC 8259 JSON: valid UTF-8, no NaN/Infinity, no lone surrogates."""
    text = raw.decode("utf-8")
    value = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    _check_text(value)
    return value


# -- one server and one client for each test function (not for each example) ---------------


def _no_delay(srv: RecordingServer) -> RecordingServer:
    """Set TCP_NODELAY on the server's connections.

    The handler writes headers and body separately; with Nagle's algorithm and delayed ACKs
    every request then takes about 40 ms, which hundreds of examples cannot afford.
    """
    accept = srv.httpd.get_request

    def get_request() -> Tuple[socket.socket, Any]:
        conn, addr = accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    srv.httpd.get_request = get_request  # type: ignore[method-assign]
    return srv


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RecordingServer]:
    srv = _no_delay(RecordingServer())
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def prop_client(shared_server: RecordingServer) -> Iterator[tracklane.Client]:
    client = tracklane.Client(
        "prop-key",
        host=shared_server.url,
        flush_interval=60,
        backoff_base=0.01,
        backoff_cap=0.05,
    )
    yield client
    client.shutdown(timeout=5)


def _argument(name: str, arbitrary: bool) -> st.SearchStrategy[Any]:
    if name in MAPPING_ARGS:
        valid = st.one_of(st.none(), s.payloads)
        return st.one_of(valid, s.values) if arbitrary else valid
    if name in ID_ARGS:
        return s.any_ids if arbitrary else s.valid_ids
    if name in TEXT_ARGS:
        valid = st.text(min_size=1, max_size=20)
        return (
            st.one_of(st.none(), valid, s.texts, s.weird_objects, s.values) if arbitrary else valid
        )
    if name == "timestamp":
        return s.any_timestamps if arbitrary else s.valid_timestamps
    assert name == "message_id"
    valid_mid = st.one_of(st.none(), st.text(min_size=1, max_size=100))
    return s.any_message_ids if arbitrary else valid_mid


def call_strategy(arbitrary: bool) -> st.SearchStrategy[Tuple[str, Dict[str, Any]]]:
    """One call: a method name and keyword arguments for it."""

    def for_method(method: str) -> st.SearchStrategy[Tuple[str, Dict[str, Any]]]:
        args = {name: _argument(name, arbitrary) for name in SIGNATURES[method]}
        return st.tuples(st.just(method), st.fixed_dictionaries(args))

    return st.sampled_from(sorted(SIGNATURES)).flatmap(for_method)


def run_and_check(
    client: tracklane.Client,
    server: RecordingServer,
    calls: List[Tuple[str, Dict[str, Any]]],
    all_valid: bool,
) -> List[Dict[str, Any]]:
    """Make the calls, flush, and check the counters and every request body that arrived."""
    assert client.flush(timeout=10)  # whatever an earlier failing example left behind
    before = client.stats()
    seen = len(server.requests)
    not_raised = 0
    queued: List[str] = []
    for method, kwargs in calls:
        try:
            ok, message = getattr(client, method)(**kwargs)
        except tracklane.ValidationError as exc:
            refused_field = exc.field
        else:
            refused_field = None
        if refused_field is not None:
            assert not all_valid, f"valid arguments refused: {refused_field}"
            assert refused_field in SIGNATURES[method], (method, refused_field)
            continue
        not_raised += 1
        assert isinstance(ok, bool)
        assert message["type"] == method
        if ok:
            queued.append(method)
    result = client.flush(timeout=10)
    assert result, result
    after = client.stats()
    assert after.pending == 0
    assert after.tracked == after.delivered + after.pending + sum(after.dropped.values())
    assert after.tracked - before.tracked == not_raised
    assert after.delivered - before.delivered == len(queued)
    arrived: List[Dict[str, Any]] = []
    for request in server.requests[seen:]:
        body = strict_loads(request.body)
        assert set(body) == {"batch", "sentAt"}
        arrived.extend(body["batch"])
    assert sorted(m["type"] for m in arrived) == sorted(queued)
    for message in arrived:
        assert ISO_MS.match(message["timestamp"]), message["timestamp"]
        assert isinstance(message["messageId"], str)
        assert 1 <= len(message["messageId"]) <= 100
        assert message["context"]["library"]["name"] == "tracklane"
        for key in ("userId", "anonymousId", "groupId", "previousId"):
            assert message.get(key) is None or isinstance(message[key], str), (key, message)
    return arrived


@PROPERTY_SETTINGS
@given(calls=st.lists(call_strategy(arbitrary=True), min_size=1, max_size=3))
def test_any_arguments_raise_only_validation_errors_and_arrive_as_strict_json(
    prop_client, shared_server, calls
):
    """Any value in any argument: only ValidationError escapes; the rest arrives as strict JSON."""
    run_and_check(prop_client, shared_server, calls, all_valid=False)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(calls=st.lists(call_strategy(arbitrary=False), min_size=1, max_size=3))
def test_valid_ids_with_any_payload_are_always_accepted(prop_client, shared_server, calls):
    """With valid ids and names, no payload value makes a call raise or go missing."""
    before = prop_client.stats()
    arrived = run_and_check(prop_client, shared_server, calls, all_valid=True)
    after = prop_client.stats()
    too_large = after.dropped.get("too_large", 0) - before.dropped.get("too_large", 0)
    assert len(arrived) + too_large == len(calls)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(properties=s.json_objects, traits=s.json_objects)
def test_json_native_values_arrive_exactly(prop_client, shared_server, properties, traits):
    """Plain JSON values (ints of any size, floats, unicode) arrive exactly as given."""
    assert prop_client.flush(timeout=10)
    seen = len(shared_server.requests)
    assert prop_client.track("u", "Exact", properties)[0]
    assert prop_client.identify("u", traits)[0]
    assert prop_client.flush(timeout=10)
    track, identify = [
        m for r in shared_server.requests[seen:] for m in strict_loads(r.body)["batch"]
    ]
    assert track["properties"] == properties
    assert identify["traits"] == traits


# -- the encoder on its own ----------------------------------------------------------------


def _raising_default(value: Any) -> Any:
    raise TypeError("user default refuses everything")


def _identity_default(value: Any) -> Any:
    return value


def _repr_default(value: Any) -> Any:
    return {"repr_of": type(value).__name__}


user_defaults = st.sampled_from([None, _raising_default, _identity_default, _repr_default])


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(value=s.values, user_default=user_defaults)
def test_encode_output_is_always_strict_json(value, user_default):
    """encode() never raises and always produces strict JSON, whatever json_default does."""
    raw = encode(value, user_default)
    assert isinstance(raw, bytes)
    strict_loads(raw)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(value=s.json_values)
def test_encode_round_trips_json_native_values(value):
    """encode() keeps plain JSON values exactly (no float rounding, no int truncation)."""
    assert strict_loads(encode(value)) == value


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(
    decimal=st.decimals(allow_nan=False, allow_infinity=False),
    ident=st.uuids(),
    naive=s.naive_datetimes,
    members=st.sets(st.integers(), max_size=6),
    items=st.tuples(st.integers(), st.text(max_size=5)),
)
def test_encode_documented_conversions(decimal, ident, naive, members, items):
    """Decimal, UUID, naive datetime, set and tuple become the documented JSON forms."""
    out = strict_loads(encode({"d": decimal, "u": ident, "n": naive, "s": members, "t": items}))
    assert out["d"] == str(decimal)
    assert out["u"] == str(ident)
    assert dt.datetime.fromisoformat(out["n"]) == naive.replace(tzinfo=dt.timezone.utc)
    assert sorted(out["s"]) == sorted(members)
    assert out["t"] == list(items)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(
    keys=st.sets(
        st.one_of(
            st.frozensets(st.integers(0, 50), min_size=1, max_size=3),
            st.tuples(st.integers(0, 50), st.tuples(st.integers(0, 50))),
        ),
        min_size=2,
        max_size=5,
    )
)
def test_encode_keeps_every_entry_of_a_dict_with_container_keys(keys):
    """Distinct container keys stay distinct: no dict entry is silently dropped."""
    value = {key: index for index, key in enumerate(keys)}
    pairs = json.loads(encode(value), object_pairs_hook=list)
    assert sorted(v for _, v in pairs) == sorted(value.values())
    assert len({k for k, _ in pairs}) == len(value)


# -- explicit cases found by the properties above ------------------------------------------


@dataclasses.dataclass
class Wrapper:
    inner: Any


HUGE = 10**5000  # more digits than Python converts to text by default


@pytest.mark.parametrize(
    "value",
    [
        {"n": HUGE},
        [-HUGE],
        {"nested": {"deeper": [HUGE]}},
        Wrapper(HUGE),
    ],
    ids=["dict", "list", "nested", "dataclass"],
)
def test_encode_huge_integer_does_not_raise(value):
    """An integer past Python's 4,300-digit str() limit is still encoded, not raised."""
    strict_loads(encode(value))


def test_encode_huge_integer_is_exact():
    """'Integers of any size exactly': a 5,001-digit integer arrives digit for digit."""
    raw = encode({"n": HUGE})
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        assert raw == b'{"n":' + str(HUGE).encode() + b"}"
    finally:
        sys.set_int_max_str_digits(limit)


def test_track_with_huge_integer_property_does_not_raise(make_client, server):
    """track() with a huge integer property returns (True, msg) instead of raising ValueError."""
    client = make_client()
    ok, _ = client.track("u", "Big", {"n": HUGE})
    assert ok
    assert client.flush(timeout=5)
    (request,) = server.requests
    (message,) = strict_loads(request.body)["batch"]
    assert message["properties"]["n"] == HUGE


@pytest.mark.parametrize("field", ["user_id", "anonymous_id"])
def test_huge_integer_id_raises_only_validation_error(make_client, field):
    """A huge integer id is converted or refused with ValidationError, never a bare ValueError."""
    client = make_client(stub=True)
    with contextlib.suppress(tracklane.ValidationError):
        client.track(**{field: HUGE, "event": "E"})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user_id": s.RaisingStrSubclass("u")},
        {"user_id": type("RaisingInt", (int,), {"__str__": s.RaisingStr.__str__})(3)},
        {"user_id": "u", "message_id": s.RaisingStr()},
        {"user_id": "u", "event": s.RaisingEq()},
    ],
    ids=["str-subclass-id", "int-subclass-id", "message-id", "event-eq"],
)
def test_objects_that_raise_in_dunders_give_only_validation_errors(make_client, kwargs):
    """A caller's object whose __str__/__eq__ raises gives ValidationError or is accepted."""
    client = make_client(stub=True)
    kwargs.setdefault("event", "E")
    with contextlib.suppress(tracklane.ValidationError):
        client.track(**kwargs)


def test_encode_with_identity_default_and_unprintable_object():
    """A json_default that returns its argument unchanged cannot make encode() raise."""
    for value in (s.RaisingStr(), s.SurrogateStr()):
        strict_loads(encode({"x": value, "big": 2**70}, _identity_default))


def test_encode_str_subclass_with_raising_str_on_slow_path():
    """A str subclass whose __str__ raises is kept as its text, even on the slow path."""
    raw = encode({"a": s.RaisingStrSubclass("text"), "big": 2**70})
    assert strict_loads(raw) == {"a": "text", "big": 2**70}


def test_encode_set_that_cannot_be_sorted_is_still_a_list():
    """A set whose members cannot be compared (Decimal NaN) still becomes a JSON list."""
    out = strict_loads(encode({"s": {Decimal("NaN"), Decimal(1)}}))
    assert isinstance(out["s"], list)
    assert sorted(out["s"], key=str) == ["1", "NaN"]


def _amsterdam_1900() -> dt.datetime:
    # Local mean time: Amsterdam was 19 minutes 32 seconds ahead of UTC until 1937.
    zoneinfo = pytest.importorskip("zoneinfo", reason="zoneinfo (Python 3.9+) gives LMT zones")
    return dt.datetime(1900, 1, 1, 12, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Amsterdam"))


def _one_second_past_the_hour() -> dt.datetime:
    return dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1, seconds=1)))


@pytest.mark.parametrize("make_timestamp", [_one_second_past_the_hour, _amsterdam_1900])
def test_timestamp_offset_is_whole_minutes_on_the_wire(make_client, server, make_timestamp):
    """A timestamp whose UTC offset has seconds still goes out as Z or +HH:MM, same instant."""
    timestamp = make_timestamp()
    client = make_client()
    client.track("u", "Old", timestamp=timestamp)
    assert client.flush(timeout=5)
    (message,) = server.accepted()
    assert ISO_MS.match(message["timestamp"]), message["timestamp"]
    sent = dt.datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))
    assert abs((sent - timestamp).total_seconds()) < 1


def test_encode_of_uuid_and_bytes_keys():
    """Non-string keys of documented types are converted like values."""
    key = uuid.UUID(int=7)
    out = strict_loads(encode({key: 1, b"raw": 2, 5: 3}))
    assert out == {str(key): 1, "raw": 2, "5": 3}
