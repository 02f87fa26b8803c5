"""tracklane.testing: CapturingClient, capture(), the assertions, MemoryTransport, the plugin."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any, Dict, List, Tuple

import pytest

import tracklane
from tracklane.testing import CapturedEvents, CapturingClient, MemoryTransport, capture

pytest_plugins = ["pytester"]


@pytest.fixture
def no_default(monkeypatch):
    """No module-level client before the test; none left behind after it."""
    tracklane.shutdown(timeout=2)
    monkeypatch.setattr(tracklane, "default_client", None)
    yield
    tracklane.shutdown(timeout=2)


# -- CapturingClient ----------------------------------------------------------------------


def test_capturing_client_is_a_real_client():
    """CapturingClient is a tracklane.Client and holds a message as soon as the call returns."""
    client = CapturingClient()
    assert isinstance(client, tracklane.Client)
    ok, returned = client.track("u1", "Signed Up", {"plan": "pro"})
    assert ok
    (message,) = client.events.messages
    assert message["event"] == "Signed Up"
    assert message["userId"] == "u1"
    assert message["properties"] == {"plan": "pro"}
    assert message["messageId"] == returned["messageId"]
    assert message["context"]["library"]["name"] == "tracklane"


def test_capturing_client_validates_like_the_real_one():
    """Invalid calls raise ValidationError and capture nothing."""
    client = CapturingClient()
    with pytest.raises(tracklane.ValidationError, match="event"):
        client.track("u")
    with pytest.raises(tracklane.ValidationError, match="user_id"):
        client.identify(traits={"a": 1})
    assert client.events.messages == []
    assert len(client.events) == 0


def test_capturing_client_converts_like_the_real_one():
    """Captured messages are in wire form: Decimal as text, datetimes with offsets, camelCase."""
    client = CapturingClient()
    client.page(
        anonymous_id=7,
        category="Docs",
        name="Intro",
        properties={"price": Decimal("9.90"), "at": dt.datetime(2020, 1, 1), "tags": ("a",)},
    )
    (message,) = client.events.messages
    assert message["anonymousId"] == "7"
    assert message["properties"] == {
        "price": "9.90",
        "at": "2020-01-01T00:00:00+00:00",
        "tags": ["a"],
    }


def test_capturing_client_refuses_too_large_messages():
    """A message over 32 KB is not captured and is counted as dropped, as in production."""
    client = CapturingClient()
    ok, _ = client.track("u", "Huge", {"blob": "x" * 40_000})
    assert ok is False
    assert client.events.messages == []
    stats = client.stats()
    assert stats.dropped == {"too_large": 1}
    assert stats.tracked == 1


def test_capturing_client_sends_nothing_over_the_network(server):
    """Even pointed at a real server, a capturing client never posts to it."""
    client = CapturingClient(host=server.url)
    client.track("u", "E")
    client.flush(timeout=2)
    client.shutdown(timeout=2)
    assert server.requests == []
    assert len(client.events) == 1


def test_events_filters_and_clear():
    """of_type(), tracked() and clear() select and forget captured messages."""
    client = CapturingClient()
    client.identify("u", {"a": 1})
    client.track("u", "A")
    client.track("u", "B")
    client.track("u", "A")
    events = client.events
    assert [m["type"] for m in events.of_type("identify")] == ["identify"]
    assert [m["event"] for m in events.tracked()] == ["A", "B", "A"]
    assert len(events.tracked("A")) == 2
    assert len(events) == 4
    events.clear()
    assert len(events) == 0
    client.track("u", "C")
    assert [m["event"] for m in events.tracked()] == ["C"]


# -- assert_tracked / assert_not_tracked --------------------------------------------------


@pytest.fixture
def events() -> CapturedEvents:
    client = CapturingClient()
    client.track("u1", "Signed Up", {"plan": "pro", "seats": 3})
    client.track(42, "Paid", {"amount": Decimal("19.90"), "at": dt.datetime(2021, 5, 6, 7, 8)})
    client.track("u1", "Clicked", {"n": 1})
    client.track("u1", "Clicked", {"n": 2})
    client.identify("u1", {"email": "a@example.com"})
    return client.events


def test_assert_tracked_passes_and_returns_matches(events):
    """assert_tracked passes for a tracked event and returns the matching messages."""
    (match,) = events.assert_tracked("Signed Up")
    assert match["properties"]["plan"] == "pro"
    assert len(events.assert_tracked("Clicked")) == 2


def test_assert_tracked_matches_user_id_and_property_subset(events):
    """user_id and a subset of the properties narrow the match."""
    events.assert_tracked("Signed Up", user_id="u1", properties={"plan": "pro"})
    (second,) = events.assert_tracked("Clicked", properties={"n": 2})
    assert second["properties"] == {"n": 2}


def test_assert_tracked_numeric_user_id(events):
    """A numeric user_id matches the id as it went over the wire."""
    events.assert_tracked("Paid", user_id=42)
    events.assert_tracked("Paid", user_id="42")


def test_assert_tracked_compares_properties_in_wire_form(events):
    """Properties are compared as sent: Decimal as its text, datetimes as ISO-8601 with offset."""
    events.assert_tracked("Paid", properties={"amount": Decimal("19.90")})
    events.assert_tracked("Paid", properties={"amount": "19.90"})
    events.assert_tracked("Paid", properties={"at": dt.datetime(2021, 5, 6, 7, 8)})
    with pytest.raises(AssertionError):
        events.assert_tracked("Paid", properties={"amount": Decimal("19.9")})
    with pytest.raises(AssertionError):
        events.assert_tracked("Paid", properties={"amount": 19.9})


def test_assert_tracked_follows_decimal_as_number():
    """With decimal_as="number" a Decimal is compared as the JSON number that was sent."""
    client = CapturingClient(decimal_as="number")
    client.track("u", "Paid", {"amount": Decimal("19.90")})
    client.events.assert_tracked("Paid", properties={"amount": Decimal("19.90")})
    client.events.assert_tracked("Paid", properties={"amount": 19.9})
    with pytest.raises(AssertionError):
        client.events.assert_tracked("Paid", properties={"amount": "19.90"})


def test_assert_tracked_fails_for_missing_event_with_clear_message(events):
    """A missing event fails, naming it and listing what was tracked."""
    with pytest.raises(AssertionError) as info:
        events.assert_tracked("Logged In")
    text = str(info.value)
    assert "'Logged In' was not tracked" in text
    assert "Signed Up" in text
    assert "Paid" in text


def test_assert_tracked_fails_for_wrong_user(events):
    """The right event for another user fails, showing the user ids seen."""
    with pytest.raises(AssertionError) as info:
        events.assert_tracked("Signed Up", user_id="someone-else")
    assert "someone-else" in str(info.value)
    assert "('Signed Up', 'u1')" in str(info.value)


def test_assert_tracked_fails_for_wrong_property(events):
    """A differing or absent property fails, showing the expected properties."""
    with pytest.raises(AssertionError, match="enterprise"):
        events.assert_tracked("Signed Up", properties={"plan": "enterprise"})
    with pytest.raises(AssertionError, match="missing"):
        events.assert_tracked("Signed Up", properties={"missing": None})


def test_assert_tracked_only_looks_at_track_messages(events):
    """identify messages never satisfy assert_tracked."""
    with pytest.raises(AssertionError):
        events.assert_tracked("identify")


def test_assert_tracked_times(events):
    """times= checks the exact number of matching messages."""
    assert len(events.assert_tracked("Clicked", times=2)) == 2
    events.assert_tracked("Clicked", properties={"n": 1}, times=1)
    with pytest.raises(AssertionError) as info:
        events.assert_tracked("Clicked", times=1)
    assert "expected 'Clicked' tracked 1 time(s), found 2" in str(info.value)
    with pytest.raises(AssertionError, match="found 1"):
        events.assert_tracked("Signed Up", times=3)


def test_assert_tracked_times_zero_passes_when_never_tracked(events):
    """times=0 asserts the event was not tracked (with those filters): it passes when absent."""
    assert events.assert_tracked("Logged In", times=0) == []
    assert events.assert_tracked("Signed Up", user_id="nobody", times=0) == []
    with pytest.raises(AssertionError, match="found 1"):
        events.assert_tracked("Signed Up", times=0)


def test_assert_tracked_float_user_id_matches_how_it_was_sent():
    """user_id is compared after the same conversion the call applied (3.0 as sent)."""
    client = CapturingClient()
    client.track(3.0, "E")
    client.events.assert_tracked("E", user_id=3.0)


def test_assert_not_tracked(events):
    """assert_not_tracked passes when absent and fails with the count when present."""
    events.assert_not_tracked("Logged In")
    events.assert_not_tracked("identify")
    with pytest.raises(AssertionError) as info:
        events.assert_not_tracked("Clicked")
    assert str(info.value) == "'Clicked' was tracked 2 time(s)"


# -- capture() ----------------------------------------------------------------------------


def test_capture_collects_module_level_calls(no_default):
    """Module-level calls inside capture() are captured."""
    with capture() as events:
        tracklane.track("u", "Signed Up", {"plan": "pro"})
        tracklane.identify("u", {"email": "a@example.com"})
        tracklane.flush()
    events.assert_tracked("Signed Up", user_id="u", properties={"plan": "pro"})
    assert [m["type"] for m in events.messages] == ["track", "identify"]


def test_capture_restores_no_default_client(no_default):
    """Without a default client before, there is none after the block."""
    with capture():
        assert isinstance(tracklane.default_client, CapturingClient)
    assert tracklane.default_client is None


def test_capture_restores_previous_default_client(no_default, monkeypatch, server, make_client):
    """The previous default client is back afterwards and never saw the captured calls."""
    previous = make_client()
    monkeypatch.setattr(tracklane, "default_client", previous)
    with capture() as events:
        tracklane.track("u", "Inside")
    assert tracklane.default_client is previous
    tracklane.track("u", "Outside")
    assert previous.flush(timeout=5)
    assert [m["event"] for m in server.accepted()] == ["Outside"]
    assert [m["event"] for m in events.tracked()] == ["Inside"]


def test_capture_restores_on_exception(no_default, monkeypatch, make_client):
    """An exception inside the block still restores the previous default client."""
    previous = make_client(stub=True)
    monkeypatch.setattr(tracklane, "default_client", previous)

    def failing_block() -> None:
        with capture():
            tracklane.track("u", "E")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_block()
    assert tracklane.default_client is previous


def test_nested_capture(no_default):
    """An inner capture() gets its own events and hands the outer one back."""
    with capture() as outer:
        tracklane.track("u", "Outer 1")
        with capture() as inner:
            tracklane.track("u", "Inner")
        tracklane.track("u", "Outer 2")
    assert [m["event"] for m in outer.tracked()] == ["Outer 1", "Outer 2"]
    assert [m["event"] for m in inner.tracked()] == ["Inner"]
    assert tracklane.default_client is None


def test_capture_passes_options(no_default):
    """capture(**options) configures the capturing client (e.g. json_default)."""

    class Money:
        cents = 250

    with capture(json_default=lambda v: {"cents": v.cents}) as events:
        tracklane.track("u", "Paid", {"amount": Money()})
    events.assert_tracked("Paid", properties={"amount": {"cents": 250}})


def test_capture_validation_errors_propagate(no_default):
    """Invalid module-level calls inside capture() raise ValidationError."""
    with capture() as events, pytest.raises(tracklane.ValidationError):
        tracklane.track(None, "E")
    assert len(events) == 0


# -- MemoryTransport ----------------------------------------------------------------------


def _client(transport: MemoryTransport, **options: Any) -> tracklane.Client:
    options.setdefault("backoff_base", 0.001)
    options.setdefault("backoff_cap", 0.002)
    return tracklane.Client("k", host="http://127.0.0.1:9", transport=transport, **options)


def test_memory_transport_answers_200_and_records_bodies():
    """By default every request is answered 200 and its body recorded."""
    transport = MemoryTransport()
    client = _client(transport)
    client.track("u", "A")
    client.track("u", "B")
    assert client.flush(timeout=5)
    client.shutdown(timeout=2)
    assert [m["event"] for m in transport.messages()] == ["A", "B"]
    body = json.loads(transport.bodies[0])
    assert set(body) == {"batch", "sentAt"}


def test_memory_transport_scripted_retryable_statuses():
    """Scripted 503s are retried with the same messageId until the 200 that follows."""
    seen: List[Tuple[BaseException, Any]] = []
    transport = MemoryTransport([503, 503])
    client = _client(transport, on_error=lambda exc, batch: seen.append((exc, batch)))
    ok, message = client.track("u", "Retried")
    assert ok
    assert client.flush(timeout=5)
    client.shutdown(timeout=2)
    assert len(transport.bodies) == 3
    ids = {m["messageId"] for m in transport.messages()}
    assert ids == {message["messageId"]}
    stats = client.stats()
    assert (stats.delivered, stats.retries, stats.dropped) == (1, 2, {})
    assert seen == []


def test_memory_transport_scripted_rejection():
    """A scripted 400 on one message drops it as rejected and tells on_error."""
    seen: List[Tuple[BaseException, List[Dict[str, Any]]]] = []
    transport = MemoryTransport([400])
    client = _client(transport, on_error=lambda exc, batch: seen.append((exc, batch)))
    client.track("u", "Rejected")
    assert client.flush(timeout=5)
    client.shutdown(timeout=2)
    ((error, batch),) = seen
    assert isinstance(error, tracklane.APIError)
    assert error.status_code == 400
    assert [m["event"] for m in batch] == ["Rejected"]
    assert client.stats().dropped == {"rejected": 1}
    assert len(transport.bodies) == 1


def test_memory_transport_scripted_400_splits_a_batch():
    """A scripted 400 on a batch of two makes the client split it and resend each half."""
    transport = MemoryTransport([400])
    client = _client(transport, flush_interval=60)
    client.track("u", "A")
    client.track("u", "B")
    assert client.flush(timeout=5)
    client.shutdown(timeout=2)
    sizes = [len(json.loads(body)["batch"]) for body in transport.bodies]
    assert sizes == [2, 1, 1]
    assert client.stats().delivered == 2


def test_memory_transport_in_sync_mode():
    """In sync_mode a scripted 500 then 200 still returns True from the call."""
    transport = MemoryTransport([500])
    client = _client(transport, sync_mode=True)
    ok, _ = client.track("u", "E")
    assert ok
    assert len(transport.bodies) == 2
    assert client.stats().retries == 1


def test_memory_transport_copies_the_script():
    """The caller's list of statuses is not consumed."""
    script = [500, 503]
    transport = MemoryTransport(script)
    transport.send(b'{"batch":[],"sentAt":"x"}', 1.0)
    assert script == [500, 503]
    assert transport.send(b'{"batch":[],"sentAt":"x"}', 1.0).status == 503
    assert transport.send(b'{"batch":[],"sentAt":"x"}', 1.0).status == 200


# -- the pytest plugin --------------------------------------------------------------------

PLUGIN_TESTS = """
import tracklane


def signup(user):
    tracklane.track(user, "Signed Up", {"plan": "pro"})


def test_captures(tracklane_events):
    signup("u1")
    tracklane_events.assert_tracked("Signed Up", user_id="u1", properties={"plan": "pro"})
    assert len(tracklane_events) == 1


def test_fails_clearly(tracklane_events):
    signup("u2")
    tracklane_events.assert_tracked("Logged In")


def test_fresh_for_each_test(tracklane_events):
    assert len(tracklane_events) == 0
    assert tracklane.default_client is not None


def test_default_client_restored_after_fixture():
    assert tracklane.default_client is None
"""


def test_plugin_fixture_in_a_subprocess(pytester):
    """tracklane_events works with no conftest (entry point), per test, with clear failures."""
    pytester.makepyfile(test_signup=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*'Logged In' was not tracked*"])
    result.stdout.fnmatch_lines(["*FAILED*test_fails_clearly*"])


def test_plugin_fixture_in_process(pytester, no_default):
    """In-process too, the fixture captures and leaves the module-level client as it was."""
    pytester.makepyfile(test_signup=PLUGIN_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    assert tracklane.default_client is None


def test_plugin_can_be_disabled(pytester):
    """-p no:tracklane removes the fixture, which proves it comes from the entry point."""
    pytester.makepyfile(
        test_disabled="""
        def test_uses_fixture(tracklane_events):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:tracklane")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'tracklane_events' not found*"])
