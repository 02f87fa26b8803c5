"""Side by side with segment-analytics-python 2.4: the same calls give the same messages.

Both libraries post to local recording servers; the messages are compared field by field.
Only these may differ: ``messageId`` and ``timestamp`` when the caller gives none,
``sentAt``, ``context.library``, and the conversions BEHAVIOUR.md documents (each asserted
explicitly below, with what segment does instead). The same code also behaves the same
around the messages: argument errors are ``AssertionError`` in both, ``Client`` has segment's
attributes with segment's values, module-level ``flush()``/``join()``/``shutdown()`` build
``default_client`` from the module settings, a falsy ``on_error`` means no handler, and the
OAuth flow produces the same assertion and Bearer header.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import enum
import inspect
import logging
import uuid
from decimal import Decimal
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import segment.analytics as segment_analytics
from segment.analytics import Client as SegmentClient

import tracklane
from helpers import RecordingServer

METHODS = ("identify", "track", "page", "screen", "group", "alias")
SEGMENT_LIBRARY = {"name": "analytics-python", "version": segment_analytics.VERSION}
TRACKLANE_LIBRARY = {"name": "tracklane", "version": tracklane.__version__}
PAST = dt.datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)


class Color(enum.Enum):
    RED = "red"


@pytest.fixture
def seg_server() -> Iterator[RecordingServer]:
    """A second recording server, for segment-analytics-python."""
    srv = RecordingServer()
    yield srv
    srv.close()


@pytest.fixture
def pair(server, seg_server, make_client):
    """A sync-mode segment client and a tracklane client, each with its own server."""
    seg = SegmentClient("compat-key", host=seg_server.url, sync_mode=True)
    ours = make_client(write_key="compat-key")
    return seg, ours


Call = Callable[[Any], Tuple[bool, Dict[str, Any]]]


def send_both(pair, server, seg_server, call: Call) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Make the same call on both clients; return (segment's message, tracklane's message)."""
    seg, ours = pair
    seg_ok, _ = call(seg)
    ours_ok, _ = call(ours)
    assert seg_ok is True
    assert ours_ok is True
    assert ours.flush(timeout=5)
    (seg_msg,) = seg_server.accepted()
    (our_msg,) = server.accepted()
    return seg_msg, our_msg


def comparable(message: Dict[str, Any], keep_id_and_time: bool) -> Dict[str, Any]:
    """The message without the fields that legitimately differ between the libraries."""
    out = copy.deepcopy(message)
    out["context"].pop("library")
    if not keep_id_and_time:
        out.pop("messageId")
        out.pop("timestamp")
    return out


def assert_same(seg_msg: Dict[str, Any], our_msg: Dict[str, Any], keep_id_and_time: bool) -> None:
    assert seg_msg["context"]["library"] == SEGMENT_LIBRARY
    assert our_msg["context"]["library"] == TRACKLANE_LIBRARY
    assert comparable(our_msg, keep_id_and_time) == comparable(seg_msg, keep_id_and_time)
    assert sorted(our_msg) == sorted(seg_msg), "the key sets differ"


CONTEXT = {"ip": "10.1.2.3", "locale": "fr-FR", "page": {"path": "/docs"}}
INTEGRATIONS = {"All": False, "Mixpanel": True, "Amplitude": {"session_id": 17}}

SAME_CASES: List[Tuple[str, str, Dict[str, Any]]] = [
    (
        "identify-everything",
        "identify",
        {
            "user_id": "user-1",
            "traits": {"email": "a@example.com", "age": 41, "tags": ["x", "y"], "vip": True},
            "context": CONTEXT,
            "timestamp": PAST,
            "anonymous_id": "anon-1",
            "integrations": INTEGRATIONS,
            "message_id": "identify-1",
        },
    ),
    ("identify-anonymous", "identify", {"anonymous_id": "anon-2", "traits": {"plan": "pro"}}),
    (
        "track-numeric-user-id",
        "track",
        {
            "user_id": 42,
            "event": "Order Completed",
            "properties": {"total": 10.5, "items": [{"sku": "a", "qty": 2}], "coupon": None},
            "context": CONTEXT,
            "integrations": INTEGRATIONS,
        },
    ),
    ("track-numeric-anonymous-id", "track", {"anonymous_id": 123, "event": "Viewed"}),
    ("track-huge-user-id", "track", {"user_id": 2**70, "event": "Big"}),
    ("track-fractional-user-id", "track", {"user_id": 1.5, "event": "Half"}),
    ("track-decimal-user-id", "track", {"user_id": Decimal("7.25"), "event": "Dec"}),
    (
        "track-past-naive-timestamp",
        "track",
        {
            "user_id": "u",
            "event": "Imported",
            "timestamp": dt.datetime(2019, 5, 5, 1, 2, 3, 456000),
        },
    ),
    (
        "track-aware-timestamp",
        "track",
        {
            "user_id": "u",
            "event": "Imported",
            "timestamp": dt.datetime(
                2021, 3, 4, 5, 6, 7, 891000, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
            ),
            "message_id": "import-7",
        },
    ),
    (
        "track-converted-values",
        "track",
        {
            "user_id": "u",
            "event": "Types",
            "properties": {
                "tuple": (1, "two"),
                "set": {"only"},
                "date": dt.date(2020, 2, 29),
                "aware": dt.datetime(2020, 2, 29, 12, tzinfo=dt.timezone.utc),
                "enum": Color.RED,
                "bytes": b"caf\xc3\xa9",
                "unicode": "Zoë 🚀 ✓",
                "big": 2**80,
                "nested": {"list": [{"t": (3,)}]},
                7: "int key",
            },
        },
    ),
    (
        "page-category-and-name",
        "page",
        {
            "user_id": "u",
            "category": "Docs",
            "name": "Getting Started",
            "properties": {"url": "https://example.com/docs", "referrer": ""},
            "context": CONTEXT,
        },
    ),
    ("page-bare", "page", {"anonymous_id": "a"}),
    (
        "screen-category-and-name",
        "screen",
        {
            "user_id": "u",
            "category": "Onboarding",
            "name": "Welcome",
            "properties": {"step": 1},
            "integrations": INTEGRATIONS,
        },
    ),
    (
        "group",
        "group",
        {
            "user_id": "u",
            "group_id": "acme",
            "traits": {"name": "ACME", "employees": 100},
            "anonymous_id": "a",
        },
    ),
    (
        "alias",
        "alias",
        {
            "previous_id": "anon-9",
            "user_id": "user-9",
            "context": CONTEXT,
            "timestamp": PAST,
            "message_id": "alias-1",
        },
    ),
]


@pytest.mark.parametrize(
    ("method", "kwargs"), [case[1:] for case in SAME_CASES], ids=[c[0] for c in SAME_CASES]
)
def test_same_message_as_segment(pair, server, seg_server, method, kwargs):
    """The same call sends the same message as segment-analytics-python, but library/id/time."""
    seg_msg, our_msg = send_both(
        pair, server, seg_server, lambda c: getattr(c, method)(**copy.deepcopy(kwargs))
    )
    given = "timestamp" in kwargs and "message_id" in kwargs
    assert_same(seg_msg, our_msg, keep_id_and_time=given)
    if "timestamp" in kwargs:
        assert our_msg["timestamp"] == seg_msg["timestamp"]
    if "message_id" in kwargs:
        assert our_msg["messageId"] == seg_msg["messageId"] == kwargs["message_id"]


POSITIONAL: Dict[str, Tuple[Any, ...]] = {
    "identify": ("u", {"t": 1}, {"ip": "1.1.1.1"}, PAST, "a", {"All": True}, "m-identify"),
    "track": ("u", "E", {"p": 1}, {"ip": "1.1.1.1"}, PAST, "a", {"All": True}, "m-track"),
    "page": ("u", "Cat", "Name", {"p": 1}, {"ip": "1.1.1.1"}, PAST, "a", {"All": True}, "m-page"),
    "screen": ("u", "Cat", "Name", {"p": 1}, {"ip": "1.1.1.1"}, PAST, "a", {"All": True}, "m-s"),
    "group": ("u", "g", {"t": 1}, {"ip": "1.1.1.1"}, PAST, "a", {"All": True}, "m-group"),
    "alias": ("old", "new", {"ip": "1.1.1.1"}, PAST, {"All": True}, "m-alias"),
}


@pytest.mark.parametrize("method", METHODS)
def test_positional_arguments_mean_the_same_as_in_segment(pair, server, seg_server, method):
    """Every argument given positionally lands in the same field as with segment."""
    args = POSITIONAL[method]
    seg_msg, our_msg = send_both(
        pair, server, seg_server, lambda c: getattr(c, method)(*copy.deepcopy(args))
    )
    assert_same(seg_msg, our_msg, keep_id_and_time=True)


def _params(function: Callable[..., Any]) -> List[inspect.Parameter]:
    return [p for p in inspect.signature(function).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("method", METHODS)
def test_call_signatures_match_segment(method):
    """Each call takes segment's parameters, in segment's order, with the same defaults."""
    seg = _params(getattr(SegmentClient, method))
    ours = _params(getattr(tracklane.Client, method))
    assert [p.name for p in ours] == [p.name for p in seg]
    assert [p.default for p in ours] == [p.default for p in seg]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in ours)


KEYWORD_VALUES: Dict[str, Any] = {
    "user_id": "kw-user",
    "anonymous_id": "kw-anon",
    "event": "Kw Event",
    "properties": {"p": 1},
    "traits": {"t": 2},
    "context": {"ip": "10.0.0.1"},
    "timestamp": PAST,
    "integrations": {"All": False},
    "message_id": "kw-message",
    "category": "Kw Category",
    "name": "Kw Name",
    "group_id": "kw-group",
    "previous_id": "kw-previous",
}


@pytest.mark.parametrize("method", METHODS)
def test_every_segment_keyword_is_accepted(pair, server, seg_server, method):
    """Calling with each of segment's keyword names gives segment's message."""
    names = [p.name for p in _params(getattr(SegmentClient, method))]
    kwargs = {name: KEYWORD_VALUES[name] for name in names}
    seg_msg, our_msg = send_both(
        pair, server, seg_server, lambda c: getattr(c, method)(**copy.deepcopy(kwargs))
    )
    assert_same(seg_msg, our_msg, keep_id_and_time=True)


def test_constructor_accepts_every_segment_keyword(make_client):
    """Client() takes every keyword of segment's Client, with segment's default values."""
    seg = _params(SegmentClient.__init__)
    kwargs = {p.name: p.default for p in seg}
    kwargs["write_key"] = "k"
    kwargs["send"] = False
    client = tracklane.Client(**kwargs)
    try:
        assert client.track("u", "E")[0]
    finally:
        client.shutdown(timeout=1)


def test_constructor_accepts_segment_keywords_with_real_values(server):
    """Segment's option names with non-default values configure the matching option."""
    handler = logging.NullHandler()
    client = tracklane.Client(
        "k",
        host=server.url,
        debug=False,
        max_queue_size=7,
        send=True,
        on_error=lambda exc, batch: None,
        gzip=True,
        max_retries=3,
        sync_mode=False,
        timeout=4,
        proxies=None,
        thread=2,
        upload_size=9,
        upload_interval=0.25,
        log_handler=handler,
        max_total_backoff_duration=60,
        max_rate_limit_duration=30,
    )
    try:
        opts = client.options
        assert (opts.max_queue_size, opts.gzip, opts.max_retries, opts.timeout) == (7, True, 3, 4)
        assert (opts.batch_size, opts.flush_interval) == (9, 0.25)
        assert (opts.max_total_backoff, opts.max_retry_after) == (60, 30)
        assert opts.log_handler is handler
        assert client.track("u", "E")[0]
        assert client.flush(timeout=5)
        assert server.requests[0].headers["content-encoding"] == "gzip"
    finally:
        client.shutdown(timeout=2)
        logging.getLogger("tracklane").removeHandler(handler)


def test_constructor_positional_order_matches_segment(server):
    """Options given positionally mean what they mean in segment's Client."""
    seg_names = [p.name for p in _params(SegmentClient.__init__)]
    ours = [
        p.name
        for p in _params(tracklane.Client.__init__)
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    assert ours == seg_names[: len(ours)]
    assert "log_handler" in ours  # the whole of segment's original positional list
    client = tracklane.Client("k", server.url, False, 5, False)
    assert client.options.host == server.url
    assert client.options.max_queue_size == 5
    assert client.options.stub


@pytest.mark.parametrize("cls", [tracklane.Client, tracklane.AsyncClient])
def test_every_positional_option_reaches_the_options(cls):
    """Each of segment's 15 positional parameters, given by position, sets its option."""
    logger = logging.getLogger("tracklane")
    level = logger.level
    handler = logging.NullHandler()

    def on_error(_exc: BaseException, _batch: List[Dict[str, Any]]) -> None:
        pass

    client = cls(
        "k", "http://127.0.0.1:9", True, 77, False, on_error, True,
        4, False, 3.5, "http://127.0.0.1:8", 2, 11, 0.25, handler,
    )  # fmt: skip
    try:
        opts = client.options
        assert opts.write_key == "k"
        assert opts.host == "http://127.0.0.1:9"
        assert opts.debug
        assert opts.max_queue_size == 77
        assert opts.stub
        assert opts.on_error is on_error
        assert opts.gzip
        assert opts.max_retries == 4
        assert not opts.sync_mode
        assert opts.timeout == 3.5
        assert opts.proxies == "http://127.0.0.1:8"
        assert opts.batch_size == 11
        assert opts.flush_interval == 0.25
        assert opts.log_handler is handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize("name", ["flush", "join", "shutdown"])
def test_lifecycle_methods_callable_like_segment(make_client, name):
    """flush(), join() and shutdown() work with no arguments, as segment's do."""
    client = make_client()
    client.track("u", "E")
    getattr(client, name)()
    assert client.stats().pending == 0


def test_batched_delivery_sends_the_same_messages(server, seg_server, make_client):
    """In background mode (flush instead of sync_mode) both send the same messages, in order."""
    seg = SegmentClient("k", host=seg_server.url, upload_interval=0.05)
    ours = make_client(write_key="k")
    try:
        for client in (seg, ours):
            client.identify("u", {"a": 1}, message_id="b-1", timestamp=PAST)
            client.track("u", "E", {"b": 2}, message_id="b-2", timestamp=PAST)
            client.page("u", "C", "N", message_id="b-3", timestamp=PAST)
            client.group("u", "g", {"n": 3}, message_id="b-4", timestamp=PAST)
        seg.flush()
        assert ours.flush(timeout=5)
    finally:
        seg.join()
    seg_msgs = seg_server.accepted()
    our_msgs = server.accepted()
    assert [m["messageId"] for m in our_msgs] == ["b-1", "b-2", "b-3", "b-4"]
    assert [comparable(m, True) for m in our_msgs] == [comparable(m, True) for m in seg_msgs]


# -- documented differences ---------------------------------------------------------------


def test_decimal_is_a_string_where_segment_sends_a_float(pair, server, seg_server):
    """Decimal arrives as its exact text in tracklane; segment rounds it to a float."""
    props = {"price": Decimal("19.90"), "exact": Decimal("12345678901234567890.123456789")}
    seg_msg, our_msg = send_both(pair, server, seg_server, lambda c: c.track("u", "E", props))
    assert our_msg["properties"] == {
        "price": "19.90",
        "exact": "12345678901234567890.123456789",
    }
    assert seg_msg["properties"] == {"price": 19.9, "exact": 1.2345678901234567e19}


def test_decimal_as_number_is_a_number_like_segment_but_exact(server, seg_server, make_client):
    """decimal_as="number" sends a JSON number as segment does, without its float rounding."""
    seg = SegmentClient("compat-key", host=seg_server.url, sync_mode=True)
    ours = make_client(write_key="compat-key", decimal_as="number")
    props = {"price": Decimal("19.90"), "exact": Decimal("12345678901234567890.123456789")}
    for client in (seg, ours):
        assert client.track("u", "E", copy.deepcopy(props))[0]
    assert ours.flush(timeout=5)
    (seg_msg,), (our_msg,) = seg_server.accepted(), server.accepted()
    assert seg_msg["properties"]["price"] == our_msg["properties"]["price"] == 19.9
    assert b'"price": 19.9,' in seg_server.requests[0].body
    assert b'"price":19.90,' in server.requests[0].body
    assert b'"exact": 1.2345678901234567e+19' in seg_server.requests[0].body
    assert b'"exact":12345678901234567890.123456789' in server.requests[0].body


def test_naive_datetime_value_gets_an_explicit_utc_offset(pair, server, seg_server):
    """A naive datetime property gets +00:00 in tracklane; segment sends it without offset."""
    naive = dt.datetime(2020, 1, 1, 12, 30)
    seg_msg, our_msg = send_both(
        pair, server, seg_server, lambda c: c.track("u", "E", {"at": naive})
    )
    assert our_msg["properties"]["at"] == "2020-01-01T12:30:00+00:00"
    assert seg_msg["properties"]["at"] == "2020-01-01T12:30:00"


def test_uuid_value_is_kept_where_segment_drops_it(pair, server, seg_server):
    """A UUID property arrives as text; segment silently drops the key (with a log line)."""
    ident = uuid.UUID(int=5)
    seg_msg, our_msg = send_both(
        pair, server, seg_server, lambda c: c.track("u", "E", {"id": ident, "n": 1})
    )
    assert our_msg["properties"] == {"id": str(ident), "n": 1}
    assert seg_msg["properties"] == {"n": 1}


def test_nan_becomes_null_where_segment_sends_invalid_json(pair, server, seg_server):
    """NaN and Infinity arrive as null; segment writes the non-JSON tokens NaN/Infinity."""
    props = {"nan": float("nan"), "inf": float("inf")}
    seg_msg, our_msg = send_both(pair, server, seg_server, lambda c: c.track("u", "E", props))
    assert our_msg["properties"] == {"nan": None, "inf": None}
    assert b"NaN" in seg_server.requests[0].body
    assert b"NaN" not in server.requests[0].body
    assert seg_msg["properties"]["inf"] == float("inf")


def test_caller_context_is_not_mutated_unlike_segment(pair):
    """tracklane leaves the caller's context dict alone; segment writes context.library into it."""
    seg, ours = pair
    seg_context: Dict[str, Any] = {"ip": "1.2.3.4"}
    our_context: Dict[str, Any] = {"ip": "1.2.3.4"}
    seg.track("u", "E", context=seg_context)
    ours.track("u", "E", context=our_context)
    assert our_context == {"ip": "1.2.3.4"}
    assert seg_context["library"] == SEGMENT_LIBRARY


def test_zero_user_id_is_valid_unlike_segment(pair, server):
    """user_id=0 is a valid id in tracklane; segment refuses it as missing."""
    seg, ours = pair
    with pytest.raises(AssertionError):
        seg.track(0, "E")
    assert ours.track(0, "E")[0]
    assert ours.flush(timeout=5)
    assert server.accepted()[0]["userId"] == "0"


def test_iso_text_timestamp_is_accepted_unlike_segment(pair, server):
    """An ISO-8601 text timestamp is accepted by tracklane; segment requires a datetime."""
    seg, ours = pair
    with pytest.raises(AssertionError):
        seg.track("u", "E", timestamp="2021-06-01T10:00:00Z")
    assert ours.track("u", "E", timestamp="2021-06-01T10:00:00Z")[0]
    assert ours.flush(timeout=5)
    assert server.accepted()[0]["timestamp"] == "2021-06-01T10:00:00.000+00:00"


def test_numeric_group_and_previous_ids_become_strings(pair, server, seg_server):
    """Numeric group_id/previous_id are sent as strings; segment sends them as JSON numbers."""
    _, ours = pair
    for client in pair:
        client.group("u", 7)
        client.alias(8, "u")
    assert ours.flush(timeout=5)
    seg_group, seg_alias = seg_server.accepted()
    our_group, our_alias = server.accepted()
    assert (our_group["groupId"], our_alias["previousId"]) == ("7", "8")
    assert (seg_group["groupId"], seg_alias["previousId"]) == (7, 8)


def test_envelope_differs_only_by_write_key_in_body(pair, server, seg_server):
    """Both authenticate with Basic auth; segment also repeats the write key in the body."""
    send_both(pair, server, seg_server, lambda c: c.track("u", "E"))
    seg_request, our_request = seg_server.requests[0], server.requests[0]
    expected = "Basic " + base64.b64encode(b"compat-key:").decode()
    assert seg_request.headers["authorization"] == our_request.headers["authorization"] == expected
    assert seg_request.path == our_request.path == "/v1/batch"
    assert set(seg_request.json) == {"batch", "sentAt", "writeKey"}
    assert set(our_request.json) == {"batch", "sentAt"}


def test_float_user_id_is_stringified_like_segment(pair, server, seg_server):
    """A whole-number float id keeps segment's text ("3.0"): a switch must not rename users."""
    seg_msg, our_msg = send_both(pair, server, seg_server, lambda c: c.track(3.0, "E"))
    assert seg_msg["userId"] == "3.0"
    assert our_msg["userId"] == seg_msg["userId"]


# -- the module-level API -----------------------------------------------------------------


@pytest.fixture
def module_api(server, seg_server, monkeypatch):
    """Both modules configured through module attributes; both reset afterwards."""
    monkeypatch.delenv("TRACKLANE_WRITE_KEY", raising=False)
    monkeypatch.delenv("SEGMENT_WRITE_KEY", raising=False)
    monkeypatch.delenv("TRACKLANE_HOST", raising=False)
    if tracklane.default_client is not None:
        tracklane.default_client.shutdown(timeout=2)
    monkeypatch.setattr(tracklane, "default_client", None)
    monkeypatch.setattr(tracklane, "write_key", "module-key")
    monkeypatch.setattr(tracklane, "host", server.url)
    monkeypatch.setattr(segment_analytics, "default_client", None)
    monkeypatch.setattr(segment_analytics, "write_key", "module-key")
    monkeypatch.setattr(segment_analytics, "host", seg_server.url)
    yield
    tracklane.shutdown(timeout=2)
    if segment_analytics.default_client is not None and segment_analytics.default_client.consumers:
        segment_analytics.default_client.join()


def _module_calls(module: Any) -> None:
    module.identify("u", {"plan": "pro"}, message_id="mod-1", timestamp=PAST)
    module.track("u", "Signed Up", {"source": "ad"}, message_id="mod-2", timestamp=PAST)
    module.page("u", "Docs", "Intro", {"p": 1}, message_id="mod-3", timestamp=PAST)
    module.screen("u", "App", "Home", message_id="mod-4", timestamp=PAST)
    module.group("u", "acme", {"n": 1}, message_id="mod-5", timestamp=PAST)
    module.alias("u", "v", message_id="mod-6", timestamp=PAST)


def test_module_level_api_mirrors_segment(module_api, server, seg_server):
    """write_key/host as module attributes, then the six calls, flush() and shutdown()."""
    for module in (segment_analytics, tracklane):
        _module_calls(module)
        module.flush()
        module.shutdown()
    assert tracklane.default_client is not None
    assert tracklane.default_client.write_key == segment_analytics.default_client.write_key
    seg_msgs, our_msgs = seg_server.accepted(), server.accepted()
    assert [m["messageId"] for m in our_msgs] == [f"mod-{i}" for i in range(1, 7)]
    assert [comparable(m, True) for m in our_msgs] == [comparable(m, True) for m in seg_msgs]
    auth = "Basic " + base64.b64encode(b"module-key:").decode()
    assert server.requests[0].headers["authorization"] == auth


def test_module_level_send_false_sends_nothing(module_api, server, monkeypatch):
    """tracklane.send = False (a common test setting with segment) validates but sends nothing."""
    monkeypatch.setattr(tracklane, "send", False)
    ok, message = tracklane.track("u", "E")
    assert ok
    assert message["event"] == "E"
    tracklane.flush()
    tracklane.shutdown()
    assert server.requests == []
    with pytest.raises(tracklane.ValidationError):
        tracklane.track(None, "E")


def test_module_level_on_error_is_used(module_api, server, monkeypatch):
    """tracklane.on_error set as a module attribute hears about a rejected batch."""
    seen: List[Tuple[BaseException, List[Dict[str, Any]]]] = []
    monkeypatch.setattr(tracklane, "on_error", lambda exc, batch: seen.append((exc, batch)))
    server.statuses(400)
    tracklane.track("u", "Rejected")
    assert tracklane.flush(timeout=5)
    ((error, batch),) = seen
    assert isinstance(error, tracklane.APIError)
    assert error.status_code == 400
    assert [m["event"] for m in batch] == ["Rejected"]


SEGMENT_MODULE_SETTINGS = [
    name
    for name in vars(SegmentClient.DefaultConfig)
    if not name.startswith("_") and hasattr(segment_analytics, name)
]


@pytest.mark.parametrize("name", SEGMENT_MODULE_SETTINGS)
def test_module_has_every_segment_module_setting(name):
    """Every module-level setting of segment exists on tracklane with the same default."""
    assert hasattr(tracklane, name), f"tracklane.{name} is missing"
    assert getattr(tracklane, name) == getattr(SegmentClient.DefaultConfig, name)


def test_module_level_log_handler_is_used(module_api, monkeypatch):
    """tracklane.log_handler (a segment module setting) reaches the default client."""
    handler = logging.NullHandler()
    monkeypatch.setattr(tracklane, "log_handler", handler, raising=False)
    try:
        client = tracklane.get_default_client()
        assert client.options.log_handler is handler
        assert handler in logging.getLogger("tracklane").handlers
    finally:
        logging.getLogger("tracklane").removeHandler(handler)


# -- drop-in details: argument errors, Client attributes, default client, on_error ---------

INVALID_CALLS: List[Tuple[str, Callable[[Any], Any]]] = [
    ("no-user", lambda c: c.track(None, "E")),
    ("no-event", lambda c: c.track("u", None)),
    ("event-not-text", lambda c: c.track("u", 5)),
    ("properties-not-dict", lambda c: c.track("u", "E", properties="x")),
    ("context-not-dict", lambda c: c.track("u", "E", context=["x"])),
    ("integrations-not-dict", lambda c: c.track("u", "E", integrations="x")),
    ("timestamp-not-time", lambda c: c.track("u", "E", timestamp=12)),
    ("identify-no-user", lambda c: c.identify(None, {"a": 1})),
    ("traits-not-dict", lambda c: c.identify("u", [1])),
    ("group-no-group-id", lambda c: c.group("u", None)),
    ("group-traits-not-dict", lambda c: c.group("u", "g", "x")),
    ("alias-no-previous-id", lambda c: c.alias(None, "u")),
    ("alias-no-user", lambda c: c.alias("p", None)),
    ("page-name-not-text", lambda c: c.page("u", name=5)),
    ("screen-category-not-text", lambda c: c.screen("u", category=["x"])),
]


@pytest.mark.parametrize(("case", "call"), INVALID_CALLS, ids=[c[0] for c in INVALID_CALLS])
def test_invalid_calls_raise_assertion_error_in_both(pair, server, seg_server, case, call):
    """Every argument error segment raises as AssertionError is an AssertionError here too."""
    seg, ours = pair
    with pytest.raises(AssertionError):
        call(seg)
    with pytest.raises(AssertionError) as info:
        call(ours)
    assert isinstance(info.value, tracklane.ValidationError)
    assert isinstance(info.value, ValueError)
    assert ours.flush(timeout=5)
    assert server.requests == seg_server.requests == []


def test_missing_write_key_is_an_assertion_error_in_both():
    """Client() without a write key raises AssertionError in both; ours is also a ValueError."""
    for client_class in (SegmentClient, tracklane.Client):
        with pytest.raises(AssertionError):
            client_class()
        with pytest.raises(AssertionError):
            client_class(None)
    with pytest.raises(ValueError, match="write_key"):
        tracklane.Client()


SEGMENT_ATTRIBUTES = [
    "write_key",
    "host",
    "debug",
    "gzip",
    "sync_mode",
    "timeout",
    "send",
    "on_error",
    "proxies",
]
# Same names, different defaults (README): segment backs off up to 12 hours, waits up to
# 30 minutes on Retry-After; tracklane 5 minutes and 60 s. Given values read back the same.
BACKOFF_ATTRIBUTES = ["max_total_backoff_duration", "max_rate_limit_duration"]


def _on_error(exc: BaseException, batch: List[Dict[str, Any]]) -> None:
    pass


@pytest.mark.parametrize(
    "options",
    [
        {"send": False},
        {
            "host": "http://127.0.0.1:9",
            "gzip": True,
            "timeout": 4,
            "sync_mode": True,
            "on_error": _on_error,
            "proxies": {"https": "http://127.0.0.1:3128"},
            "max_total_backoff_duration": 30,
            "max_rate_limit_duration": 20,
            "send": False,
        },
        {"on_error": False, "send": False, "timeout": 2.5, "host": "https://api.example.com/"},
    ],
    ids=["defaults", "configured", "falsy-on-error"],
)
def test_client_attributes_match_segment(options):
    """segment's public Client attributes exist with segment's values, and log is a logger."""
    seg = SegmentClient("attr-key", **options)
    ours = tracklane.Client("attr-key", **options)
    try:
        for name in SEGMENT_ATTRIBUTES + [n for n in BACKOFF_ATTRIBUTES if n in options]:
            assert getattr(ours, name) == getattr(seg, name), name
        assert ours.max_retries == 10
        assert isinstance(ours.log, logging.Logger)
        assert isinstance(seg.log, logging.Logger)
    finally:
        ours.shutdown(timeout=1)


def test_attributes_are_read_only_views():
    """The attributes cannot be assigned (options are fixed once the client is built)."""
    client = tracklane.Client("k", send=False)
    with pytest.raises(AttributeError):
        client.gzip = True  # type: ignore[misc]


@pytest.mark.parametrize("function", ["flush", "join", "shutdown"])
def test_module_lifecycle_calls_build_the_default_client_like_segment(module_api, function):
    """analytics.flush()/join()/shutdown() build the default client, as segment's do."""
    for module in (segment_analytics, tracklane):
        assert module.default_client is None
        getattr(module, function)()
    assert tracklane.default_client is not None
    assert tracklane.default_client.write_key == segment_analytics.default_client.write_key
    assert tracklane.default_client.host == tracklane.host  # each points at its own server
    assert segment_analytics.default_client.host == segment_analytics.host


def test_module_settings_reach_the_default_client_like_segment(
    module_api, server, seg_server, monkeypatch
):
    """gzip, sync_mode, timeout, max_queue_size, send, on_error set on the module configure
    the default client in both, and it sends the same message."""
    settings = {
        "gzip": True,
        "sync_mode": True,
        "timeout": 4,
        "max_queue_size": 42,
        "on_error": False,
        "send": True,
    }
    for module in (segment_analytics, tracklane):
        for name, value in settings.items():
            monkeypatch.setattr(module, name, value)
        module.flush()
    seg, ours = segment_analytics.default_client, tracklane.default_client
    for name in SEGMENT_ATTRIBUTES:
        if name != "host":  # each points at its own server
            assert getattr(ours, name) == getattr(seg, name), name
    assert ours.options.max_queue_size == seg.queue.maxsize == 42
    for module in (segment_analytics, tracklane):
        assert module.track("u", "Inline", {"n": 1}, message_id="m-1", timestamp=PAST)[0]
    (seg_msg,), (our_msg,) = seg_server.accepted(), server.accepted()  # sync_mode: sent
    assert comparable(our_msg, True) == comparable(seg_msg, True)
    assert seg_server.requests[0].headers["content-encoding"] == "gzip"
    assert server.requests[0].headers["content-encoding"] == "gzip"


@pytest.mark.parametrize("value", [None, False])
def test_falsy_on_error_is_accepted_like_segment(module_api, server, monkeypatch, value):
    """on_error=None/False is "no handler" for Client and module settings in both."""
    seg = SegmentClient("k", on_error=value, send=False)
    ours = tracklane.Client("k", host=server.url, on_error=value)
    assert ours.on_error == seg.on_error
    server.statuses(400)
    assert ours.track("u", "Rejected")[0]
    assert ours.flush(timeout=5)
    assert ours.stats().dropped == {"rejected": 1}
    ours.shutdown(timeout=2)
    monkeypatch.setattr(tracklane, "on_error", value)
    assert tracklane.track("u", "Module")[0]
    assert tracklane.flush(timeout=5)
    assert [m["event"] for m in server.accepted()] == ["Module"]


def test_truthy_non_callable_on_error_is_refused_unlike_segment():
    """A truthy on_error that cannot be called is refused here; segment fails only on error."""
    SegmentClient("k", on_error="log it", send=False)
    with pytest.raises(tracklane.ConfigurationError, match="on_error"):
        tracklane.Client("k", on_error="log it")


def test_oauth_flow_matches_segment(server, seg_server, make_client):
    """With the same OAuth options both get a token for a verified assertion of the same
    shape (header and claim names) and send the batch with it as Bearer."""
    from oauth_server import CLIENT_ID, KEY_ID, TokenServer, new_private_key, pem

    key = new_private_key()
    tokens = TokenServer(key.public_key())
    try:
        server.gate = seg_server.gate = tokens.gate
        options = {
            "oauth_client_id": CLIENT_ID,
            "oauth_client_key": pem(key),
            "oauth_key_id": KEY_ID,
            "oauth_auth_server": tokens.url,
        }
        seg = SegmentClient("k", host=seg_server.url, sync_mode=True, **options)
        ours = make_client(write_key="k", **options)
        assert seg.track("u", "Segment")[0]
        assert ours.track("u", "Ours")[0]
        assert ours.flush(timeout=10)
        seg_request, our_request = tokens.requests
        assert (seg_request.status, our_request.status) == (200, 200), tokens.requests
        assert seg_request.header == our_request.header
        assert sorted(seg_request.claims) == sorted(our_request.claims)
        assert seg_request.form.keys() == our_request.form.keys()
        assert seg_server.requests[0].headers["authorization"] == "Bearer tok-1"
        assert server.requests[0].headers["authorization"] == "Bearer tok-2"
        assert [m["event"] for m in seg_server.accepted() + server.accepted()] == [
            "Segment",
            "Ours",
        ]
    finally:
        tokens.stop()
