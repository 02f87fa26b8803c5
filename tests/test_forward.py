"""``forward``: a message already in wire form goes out as given, through the same queue."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any, Dict

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracklane
from helpers import Action
from tracklane.messages import check_wire_message, prepare_wire_message

pytestmark = pytest.mark.both_clients

FOREIGN_LIBRARY = {"name": "analytics-ruby", "version": "2.4.0"}


def received(**fields: Any) -> Dict[str, Any]:
    """A track message as another library sent it."""
    message: Dict[str, Any] = {
        "type": "track",
        "messageId": "ruby-0001",
        "userId": "u-1",
        "event": "Order Completed",
        "properties": {"total": 12.5, "items": [{"sku": "a"}]},
        "context": {"library": FOREIGN_LIBRARY, "ip": "10.0.0.1", "über key": "ü"},
        "integrations": {"All": False, "Mixpanel": {"apiSecret": "x"}},
        "timestamp": "2023-04-05T06:07:08.912Z",
    }
    message.update(fields)
    return message


def test_forward_sends_the_message_as_given(server, make_client):
    """Every field arrives unchanged: messageId, context.library, integrations, the
    timestamp's text and fields tracklane has no name for; sentAt is the batch's."""
    client = make_client()
    message = received(anonymousId=None, channel="server", version=2)
    queued, sent = client.forward(message)
    assert queued is True
    assert sent == message
    assert client.flush(timeout=5)
    (request,) = server.requests
    (got,) = request.batch
    assert got == message
    assert request.json["sentAt"] >= "2024"
    assert client.stats().delivered == 1


def test_forward_fills_in_only_what_a_sender_must(server, make_client):
    """A missing messageId or timestamp is filled in; a message's own sentAt and writeKey
    give way to the client's; the caller's dict is not changed."""
    client = make_client()
    message = {"type": "identify", "userId": "u-1", "sentAt": "2020-01-01T00:00:00.000Z"}
    message["writeKey"] = "someone-elses-key"
    original = dict(message)
    queued, sent = client.forward(message)
    assert queued is True
    assert message == original
    assert client.flush(timeout=5)
    (got,) = server.requests[0].batch
    assert got == sent
    assert set(got) == {"type", "userId", "timestamp", "messageId"}
    assert uuid.UUID(got["messageId"]).version == 4
    stamp = dt.datetime.fromisoformat(got["timestamp"])
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 60


def test_forward_sends_numeric_ids_as_text(server, make_client):
    """A number as userId or anonymousId (which the collector's rules accept) goes out as
    its text, as the six calls send ids: a warehouse column never sees 42 beside "u-1"."""
    client = make_client()
    client.forward({"type": "group", "userId": 42, "anonymousId": 7, "groupId": "g-1"})
    client.forward({"type": "alias", "userId": 5, "previousId": "p-1"})
    assert client.flush(timeout=5)
    group, alias = [got for request in server.requests for got in request.batch]
    assert (group["userId"], group["anonymousId"], group["groupId"]) == ("42", "7", "g-1")
    assert alias["userId"] == "5"


@pytest.mark.parametrize(
    ("given_time", "wire"),
    [
        (dt.datetime(2023, 4, 5, 6, 7, 8, 912000), "2023-04-05T06:07:08.912+00:00"),
        (dt.date(2023, 4, 5), "2023-04-05T00:00:00.000+00:00"),
        ("2023-04-05 06:07:08", "2023-04-05T06:07:08.000+00:00"),
        ("2023-04-05T06:07:08.912+02:00", "2023-04-05T06:07:08.912+02:00"),
        ("2023-04-05T06:07:08Z", "2023-04-05T06:07:08Z"),
    ],
)
def test_forward_keeps_rfc3339_text_and_writes_other_times_in_wire_form(
    server, make_client, given_time, wire
):
    """RFC 3339 text is sent byte for byte; a datetime, a date or other ISO-8601 text is
    written in wire form, as the six calls write it."""
    client = make_client()
    client.forward(received(timestamp=given_time))
    assert client.flush(timeout=5)
    assert server.requests[0].batch[0]["timestamp"] == wire


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"type": None}, "type", "missing 'type'"),
        ({"type": "purchase"}, "type", "unknown type 'purchase'"),
        ({"userId": None}, "userId", "missing both 'userId' and 'anonymousId'"),
        ({"userId": ["u"]}, "userId", "'userId' must be a string"),
        ({"event": ""}, "event", "track requires 'event'"),
        ({"properties": [1]}, "properties", "'properties' must be an object"),
        ({"context": "x"}, "context", "'context' must be an object"),
        ({"messageId": "m" * 101}, "messageId", "longer than 100 characters"),
        ({"messageId": 7}, "messageId", "must be a non-empty string"),
        ({"timestamp": "last week"}, "timestamp", "not an ISO-8601 time"),
        ({"timestamp": "2023-02-30T00:00:00.000Z"}, "timestamp", "not an ISO-8601 time"),
        ({"timestamp": 1700000000}, "timestamp", "must be a datetime"),
    ],
)
def test_forward_refuses_what_the_collector_refuses(make_client, fields, field, problem):
    """A bad message raises ValidationError naming the wire field; nothing is queued."""
    client = make_client()
    with pytest.raises(tracklane.ValidationError) as caught:
        client.forward(received(**fields))
    assert caught.value.field == field
    assert problem in caught.value.problem
    assert client.stats().tracked == 0


def test_forward_refuses_a_message_that_is_not_a_mapping(make_client):
    """A list (or anything not a mapping) is refused naming it."""
    client = make_client()
    with pytest.raises(tracklane.ValidationError, match="message: must be a mapping"):
        client.forward([("type", "track")])


def test_forward_drops_a_message_over_the_size_limit_and_counts_it(server, make_client):
    """Over 32 KB a forwarded message is dropped, counted and reported like any call's."""
    errors = []
    client = make_client(on_error=lambda exc, batch: errors.append(exc))
    queued, _ = client.forward(received(properties={"blob": "x" * 40_000}))
    assert queued is False
    assert client.flush(timeout=5)
    assert client.stats().dropped == {"too_large": 1}
    assert isinstance(errors[0], tracklane.MessageTooLargeError)
    assert server.requests == []


def test_forward_sends_the_given_encoding_byte_for_byte(server, make_client):
    """With ``encoded`` (the text the message was parsed from) and nothing to fill in,
    those bytes go out as they are: key order, spacing and number spelling kept."""
    client = make_client()
    text = (
        b'{ "type": "track", "messageId": "m-1", "userId": "u", "event": "E",'
        b' "properties": {"total": 1.50, "n": 1e3}, "timestamp": "2023-04-05T06:07:08.912Z" }'
    )
    message = orjson.loads(text)
    queued, sent = client.forward(message, encoded=text)
    assert queued is True
    assert sent is message
    assert client.flush(timeout=5)
    (request,) = server.requests
    assert text in request.body
    assert request.batch == [message]


def test_forward_encodes_again_when_something_is_filled_in(server, make_client):
    """``encoded`` is not used when the message needs a messageId, a timestamp or an id
    as text: what is sent is the completed message."""
    client = make_client()
    text = b'{"type":"track","userId":7,"event":"E","timestamp":"2023-04-05T06:07:08.912Z"}'
    queued, sent = client.forward(orjson.loads(text), encoded=text)
    assert queued is True
    assert client.flush(timeout=5)
    (got,) = server.requests[0].batch
    assert got == sent
    assert got["userId"] == "7"
    assert got["messageId"]


@pytest.mark.parametrize("encoded", ["{}", b"[1]", b'{"type":"track"}\n', bytearray(b"{}")])
def test_forward_refuses_an_encoding_that_is_not_json_object_bytes(make_client, encoded):
    """``encoded`` must be bytes holding a JSON object; anything else is refused naming it,
    and nothing is queued."""
    client = make_client()
    with pytest.raises(tracklane.ValidationError, match="encoded: must be"):
        client.forward(received(), encoded=encoded)
    assert client.stats().tracked == 0


def test_forward_drops_an_encoding_over_the_size_limit(server, make_client):
    """The 32 KB limit applies to the given bytes: over it, dropped and counted."""
    client = make_client()
    message = received(properties={"blob": "x" * 40_000})
    queued, _ = client.forward(message, encoded=orjson.dumps(message))
    assert queued is False
    assert client.flush(timeout=5)
    assert client.stats().dropped == {"too_large": 1}
    assert server.requests == []


def test_forwarded_messages_wait_in_the_durable_queue(server, make_client, tmp_path):
    """Undelivered at shutdown, a forwarded message stays on disk and the next client
    sends it unchanged, as any call's would."""
    server.default = Action(status=503)
    path = str(tmp_path / "outage.db")
    client = make_client(queue_path=path, max_retries=100_000)
    client.forward(received())
    client.shutdown(timeout=0.5)
    assert client.stats().pending == 1
    server.default = Action()
    later = make_client(queue_path=path)
    assert later.stats().recovered == 1
    assert later.flush(timeout=10)
    assert server.accepted() == [received()]


def test_deliver_forward_sends_inside_the_call(server):
    """``await client.deliver.forward(message)`` delivers before it returns."""

    async def main() -> Any:
        client = tracklane.AsyncClient("k", host=server.url)
        try:
            return await client.deliver.forward(received())
        finally:
            await client.shutdown(timeout=2)

    delivered, _ = asyncio.run(main())
    assert delivered is True
    assert server.requests[0].batch == [received()]


_ids = st.one_of(st.none(), st.just(""), st.text(max_size=3), st.integers(), st.booleans())
_objects = st.one_of(st.none(), st.just({}), st.just([]), st.just("x"))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x", None]),
    user_id=_ids,
    anonymous_id=_ids,
    required=_ids,
    message_id=st.one_of(st.none(), st.just(""), st.text(max_size=2), st.just("m" * 101)),
    properties=_objects,
    context=_objects,
)
def test_forward_accepts_exactly_what_check_wire_message_accepts(
    kind, user_id, anonymous_id, required, message_id, properties, context
):
    """The inline check of the usual shape never accepts what the collector's rules refuse,
    nor refuses what they accept."""
    message: Dict[str, Any] = {"type": kind, "userId": user_id, "anonymousId": anonymous_id}
    message.update(event=required, groupId=required, previousId=required)
    message.update(messageId=message_id, properties=properties, context=context)
    try:
        check_wire_message(message)
        expected = None
    except tracklane.ValidationError as exc:
        expected = (exc.field, exc.problem)
    if expected is None:
        assert prepare_wire_message(message)["type"] == kind
    else:
        with pytest.raises(tracklane.ValidationError) as caught:
            prepare_wire_message(message)
        assert (caught.value.field, caught.value.problem) == expected
