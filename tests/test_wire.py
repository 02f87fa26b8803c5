"""What reaches the server, byte for byte: the six calls, headers, auth, gzip, conversions."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import re
import uuid
from decimal import Decimal
from pathlib import PurePosixPath

import pytest

import tracklane

pytestmark = pytest.mark.both_clients
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")


def test_track_wire_format(server, make_client):
    """A track call arrives as one message in a batch with the Segment field names."""
    client = make_client()
    ok, returned = client.track("u1", "Order Completed", {"total": 10})
    assert ok is True
    assert client.flush(timeout=5)
    (request,) = server.requests
    assert request.path == "/v1/batch"
    (msg,) = request.batch
    assert msg["type"] == "track"
    assert msg["userId"] == "u1"
    assert msg["event"] == "Order Completed"
    assert msg["properties"] == {"total": 10}
    assert msg["context"]["library"] == {"name": "tracklane", "version": tracklane.__version__}
    assert msg["integrations"] == {}
    assert msg["anonymousId"] is None
    assert uuid.UUID(msg["messageId"]).version == 4
    assert msg["messageId"] == returned["messageId"]
    assert ISO_MS.match(msg["timestamp"])
    assert ISO_MS.match(request.json["sentAt"])
    assert set(request.json) == {"batch", "sentAt"}


@pytest.mark.parametrize(
    ("call", "args", "expected"),
    [
        (
            "identify",
            {"user_id": "u", "traits": {"email": "a@b.c"}},
            {"traits": {"email": "a@b.c"}},
        ),
        (
            "page",
            {"user_id": "u", "category": "Docs", "name": "Intro", "properties": {"x": 1}},
            {"category": "Docs", "name": "Intro", "properties": {"x": 1}},
        ),
        ("screen", {"anonymous_id": "a", "name": "Home"}, {"name": "Home", "anonymousId": "a"}),
        (
            "group",
            {"user_id": "u", "group_id": "g1", "traits": {"n": 2}},
            {"groupId": "g1", "traits": {"n": 2}},
        ),
        ("alias", {"previous_id": "old", "user_id": "new"}, {"previousId": "old", "userId": "new"}),
        ("track", {"anonymous_id": "anon", "event": "E"}, {"event": "E", "userId": None}),
    ],
)
def test_every_call_type_wire_format(server, make_client, call, args, expected):
    """Each call type sends its type and its own fields."""
    client = make_client()
    ok, _ = getattr(client, call)(**args)
    assert ok
    assert client.flush(timeout=5)
    (msg,) = server.accepted()
    assert msg["type"] == call
    for key, value in expected.items():
        assert msg[key] == value


def test_headers_auth_and_user_agent(server, make_client):
    """Basic auth carries the write key as user name with an empty password."""
    client = make_client(write_key="secret-key")
    client.identify("u")
    client.flush(timeout=5)
    headers = server.requests[0].headers
    scheme, token = headers["authorization"].split()
    assert scheme == "Basic"
    assert base64.b64decode(token) == b"secret-key:"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"tracklane/{tracklane.__version__}"
    assert "content-encoding" not in headers
    assert b"secret-key" not in server.requests[0].body


def test_gzip(server, make_client):
    """gzip=True compresses the body and says so."""
    client = make_client(gzip=True)
    for i in range(50):
        client.track("u", "E", {"i": i, "pad": "x" * 100})
    client.flush(timeout=5)
    request = server.requests[0]
    assert request.headers["content-encoding"] == "gzip"
    assert len(request.raw) < len(request.body) / 3
    assert len(server.accepted()) == 50


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model:
    def model_dump(self, mode: str = "python"):
        return {"kind": "pydantic-like", "mode": mode}


class ToDict:
    def to_dict(self):
        return {"kind": "to_dict"}


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_conversions(server, make_client):
    """Every documented type arrives JSON-safe, with nothing lost or guessed."""
    some_uuid = uuid.uuid4()
    client = make_client()
    client.track(
        "u",
        "Types",
        {
            "decimal": Decimal("12345678901234567890.123456789"),
            "uuid": some_uuid,
            "aware": dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "naive": dt.datetime(2024, 5, 1, 12, 0, 0),
            "date": dt.date(2024, 5, 1),
            "set": {3, 1, 2},
            "frozenset": frozenset(["b", "a"]),
            "tuple": (1, "two"),
            "enum": Color.RED,
            "dataclass": Point(1, 2),
            "model": Model(),
            "to_dict": ToDict(),
            "big": 2**80,
            "neg_big": -(2**70),
            "nan": float("nan"),
            "inf": float("inf"),
            "bytes": b"caf\xc3\xa9 \xff",
            "path": PurePosixPath("/tmp/x"),
            "opaque": Opaque(),
            "nested": {"deeper": [{"d": Decimal("1.10")}]},
            3: "int key",
        },
    )
    client.flush(timeout=5)
    raw = server.requests[0].body
    props = server.accepted()[0]["properties"]
    assert props["decimal"] == "12345678901234567890.123456789"
    assert props["uuid"] == str(some_uuid)
    assert props["aware"] == "2024-05-01T12:00:00+02:00"
    assert props["naive"] == "2024-05-01T12:00:00+00:00"
    assert props["date"] == "2024-05-01"
    assert props["set"] == [1, 2, 3]
    assert props["frozenset"] == ["a", "b"]
    assert props["tuple"] == [1, "two"]
    assert props["enum"] == "red"
    assert props["dataclass"] == {"x": 1, "y": 2}
    assert props["model"] == {"kind": "pydantic-like", "mode": "json"}
    assert props["to_dict"] == {"kind": "to_dict"}
    assert props["big"] == 2**80
    assert b"1208925819614629174706176" in raw
    assert props["neg_big"] == -(2**70)
    assert props["nan"] is None
    assert props["inf"] is None
    assert props["bytes"] == "café \ufffd"
    assert props["path"] == "/tmp/x"
    assert props["opaque"] == "opaque!"
    assert props["nested"] == {"deeper": [{"d": "1.10"}]}
    assert props["3"] == "int key"


def test_circular_and_deep_values_do_not_raise(server, make_client):
    """A cycle or absurd nesting is replaced by a marker, never raised."""
    loop: dict = {"name": "loop"}
    loop["self"] = loop
    deep: list = []
    cursor = deep
    for _ in range(5000):
        nxt: list = []
        cursor.append(nxt)
        cursor = nxt
    client = make_client()
    assert client.track("u", "Weird", {"loop": loop, "deep": deep})[0]
    client.flush(timeout=5)
    props = server.accepted()[0]["properties"]
    assert props["loop"]["name"] == "loop"
    assert props["loop"]["self"] == "<circular reference>"
    assert "deep" in props


def test_json_default_option(server, make_client):
    """json_default converts the user's own types before the built-in rules."""

    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    def default(value):
        if isinstance(value, Money):
            return {"cents": value.cents}
        raise TypeError

    client = make_client(json_default=default)
    client.track("u", "Paid", {"amount": Money(250), "d": Decimal("1.5")})
    client.flush(timeout=5)
    assert server.accepted()[0]["properties"] == {"amount": {"cents": 250}, "d": "1.5"}


def test_values_are_snapshotted_at_the_call(server, make_client):
    """Mutating the caller's dicts after the call changes nothing that is sent."""
    props = {"items": [1, 2], "meta": {"k": "v"}}
    context = {"ip": "1.2.3.4"}
    client = make_client(flush_interval=60)
    client.track("u", "E", props, context=context)
    props["items"].append(3)
    props["meta"]["k"] = "changed"
    props["new"] = True
    context["ip"] = "0.0.0.0"
    client.flush(timeout=5)
    msg = server.accepted()[0]
    assert msg["properties"] == {"items": [1, 2], "meta": {"k": "v"}}
    assert msg["context"]["ip"] == "1.2.3.4"
    assert "library" not in context


def test_ids_timestamps_and_integrations(server, make_client):
    """Numeric ids become strings; given timestamps and ids are kept; integrations pass through."""
    client = make_client()
    past = dt.datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    client.track(
        0,
        "Imported",
        timestamp=past,
        message_id="my-id-1",
        integrations={"All": False, "Mixpanel": True},
    )
    client.identify(12345, timestamp="2021-06-01T10:00:00Z")
    client.page(anonymous_id=uuid.UUID(int=1), timestamp=dt.date(2022, 2, 2))
    client.flush(timeout=5)
    track, identify, page = server.accepted()
    assert track["userId"] == "0"
    assert track["timestamp"] == "2020-01-02T03:04:05.678+00:00"
    assert track["messageId"] == "my-id-1"
    assert track["integrations"] == {"All": False, "Mixpanel": True}
    assert identify["userId"] == "12345"
    assert identify["timestamp"] == "2021-06-01T10:00:00.000+00:00"
    assert page["anonymousId"] == "00000000-0000-0000-0000-000000000001"
    assert page["timestamp"] == "2022-02-02T00:00:00.000+00:00"


def test_caller_context_is_kept_and_library_added(server, make_client):
    """The caller's context fields are sent with context.library added."""
    client = make_client()
    client.track("u", "E", context={"ip": "10.0.0.1", "locale": "fr"})
    client.flush(timeout=5)
    ctx = server.accepted()[0]["context"]
    assert ctx["ip"] == "10.0.0.1"
    assert ctx["locale"] == "fr"
    assert ctx["library"]["name"] == "tracklane"


def test_fast_and_general_track_paths_send_the_same_message():
    """The inlined common track() call sends exactly what the general path sends."""
    from tracklane.testing import CapturingClient

    client = CapturingClient()
    client.track("u", "E", {"a": Decimal("1.5")})  # the inlined path
    client.track("u", "E", {"a": Decimal("1.5")}, context={})  # the general path
    fast, general = client.events.messages
    for msg in (fast, general):
        del msg["timestamp"], msg["messageId"]
    assert fast == general
    assert list(fast) == list(general)


DECIMALS = {
    "price": Decimal("19.90"),
    "exact": Decimal("12345678901234567890.123456789"),
    "tiny": Decimal("1E-30"),
    "negative": Decimal("-0.000"),
    "nan": Decimal("NaN"),
    "infinite": Decimal("-Infinity"),
}


@pytest.mark.parametrize("slow_path", [False, True], ids=["orjson", "slow-path"])
def test_decimal_as_number_is_exact_on_the_wire(server, make_client, slow_path):
    """decimal_as="number" writes each Decimal's own digits as a JSON number (never a float);
    NaN and Infinity, which JSON numbers cannot be, become null."""
    client = make_client(decimal_as="number")
    properties = dict(DECIMALS, nested=[{"d": Decimal("0.1")}])
    if slow_path:
        properties["big"] = 2**80  # orjson refuses it: the whole message takes the slow path
    client.track("u", "Priced", properties)
    assert client.flush(timeout=5)
    body = server.requests[0].body
    for text in (
        b'"price":19.90',
        b'"exact":12345678901234567890.123456789',
        b'"tiny":1E-30',
        b'"negative":-0.000',
        b'"nan":null',
        b'"infinite":null',
        b'"nested":[{"d":0.1}]',
    ):
        assert text in body
    received = server.requests[0].batch[0]["properties"]
    assert received["price"] == 19.9
    assert isinstance(received["exact"], float)


def test_decimal_is_a_string_by_default(server, make_client):
    """Without decimal_as (or with "string"), a Decimal keeps being sent as its exact text."""
    for options in ({}, {"decimal_as": "string"}):
        client = make_client(**options)
        client.track("u", "Priced", {"price": Decimal("19.90"), "nan": Decimal("NaN")})
        assert client.flush(timeout=5)
    for request in server.requests:
        assert b'"price":"19.90"' in request.body
        assert b'"nan":"NaN"' in request.body


def test_decimal_as_number_lets_json_default_decide_first(server, make_client):
    """A json_default that handles Decimal wins over decimal_as (in both encoding paths)."""
    client = make_client(
        decimal_as="number",
        json_default=lambda v: f"D:{v}" if isinstance(v, Decimal) else str(v),
    )
    client.track("u", "E", {"d": Decimal("1.5")})
    client.track("u", "E", {"d": Decimal("1.5"), "big": 2**80})
    assert client.flush(timeout=5)
    assert [m["properties"]["d"] for m in server.accepted()] == ["D:1.5", "D:1.5"]


@pytest.mark.parametrize("value", ["float", "str", None, 1])
def test_bad_decimal_as_is_refused(value):
    """decimal_as accepts only "string" and "number", naming the option otherwise."""
    with pytest.raises(tracklane.ConfigurationError, match="decimal_as"):
        tracklane.Client("k", decimal_as=value)
