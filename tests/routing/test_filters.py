"""Filters per source and per destination: drops by type and event name, removed properties."""

from __future__ import annotations

from pathlib import Path

import httpx

from tracklane.collector import serve_in_thread

from .recorder import RecorderDestination, received
from .support import config_of, destinations_status, post_batch, track, wait_until


def test_filters_drop_and_count_and_strip_properties(tmp_path: Path) -> None:
    """Dropped messages are counted as filtered; named properties and traits are removed."""
    config = config_of(
        {
            "sources": [
                {"name": "backend", "write_keys": ["key-b"]},
                {"name": "web", "write_keys": ["key-w"]},
            ],
            "destinations": [
                {"name": "FilteredA", "type": "recorder"},
                {"name": "PlainB", "type": "recorder", "sources": ["backend"]},
            ],
            "filters": [
                {
                    "destination": "FilteredA",
                    "drop_events": ["Debug *", "Heartbeat"],
                    "drop_types": ["page"],
                    "drop_properties": ["email", "phone"],
                },
                {"source": "web", "drop_types": ["identify"]},
            ],
        }
    )
    for name in ("FilteredA", "PlainB"):
        RecorderDestination.seen.pop(name, None)
    kept = track(properties={"total": 3, "email": "a@b.c", "phone": "1"})
    debug = track(event="Debug cache miss")
    heartbeat = track(event="Heartbeat")
    near_miss = track(event="debug cache miss")  # globs are case-sensitive
    page = {"type": "page", "messageId": "page-1", "userId": "u", "name": "Home"}
    identify = {
        "type": "identify",
        "messageId": "identify-1",
        "userId": "u",
        "traits": {"email": "a@b.c", "plan": "pro"},
    }
    web_identify = {"type": "identify", "messageId": "identify-web", "userId": "u"}
    web_track = track()
    with serve_in_thread(tmp_path / "events.db", config=config) as server:
        post_batch(server.url, "key-b", [kept, debug, heartbeat, near_miss, page, identify])
        post_batch(server.url, "key-w", [web_identify, web_track])
        wait_until(
            lambda: all(
                s["pending"] == 0 for s in destinations_status(server.url, "key-b").values()
            ),
            20,
            "both destinations to handle everything",
        )
        status = destinations_status(server.url, "key-b")
    a_ids = RecorderDestination.ids("FilteredA")
    assert sorted(a_ids) == sorted(
        [kept["messageId"], near_miss["messageId"], "identify-1", web_track["messageId"]]
    )
    assert status["FilteredA"]["filtered"] == 4  # debug, heartbeat, page, web identify
    assert status["FilteredA"]["delivered"] == 4
    by_id = {e.message["messageId"]: e.message for e in RecorderDestination.seen["FilteredA"]}
    assert by_id[kept["messageId"]]["properties"] == {"total": 3}
    assert by_id["identify-1"]["traits"] == {"plan": "pro"}
    # PlainB takes only the backend source and has no destination filter.
    b = {e.message["messageId"]: e.message for e in RecorderDestination.seen["PlainB"]}
    assert len(b) == 6
    assert b[kept["messageId"]]["properties"]["email"] == "a@b.c"
    assert status["PlainB"]["skipped"] == 2
    assert status["PlainB"]["filtered"] == 0


def test_a_destination_handed_the_encoded_json_gets_the_messages_decoded_ones_get(
    tmp_path: Path,
) -> None:
    """Encoded by SQLite (``accepts_wire``) or decoded: each destination gets the same
    messages, keys in the same order, times included (a client timestamp corrected by the
    batch's sentAt and kept as originalTimestamp, none at all, a client's receivedAt
    replaced where it stands), and a destination's filter applies to the encoded form."""
    names = {"Decoded": "recorder", "Encoded": "wire-recorder", "EncodedFiltered": "wire-recorder"}
    config = config_of(
        {
            "sources": [{"name": "backend", "write_keys": ["key-b"]}],
            "destinations": [{"name": name, "type": kind} for name, kind in names.items()],
            "filters": [{"destination": "EncodedFiltered", "drop_properties": ["email"]}],
        }
    )
    for name in names:
        RecorderDestination.seen.pop(name, None)
    messages = [
        track(timestamp="2024-05-01T09:59:58.500Z", properties={"total": 1, "email": "a@b.c"}),
        track(properties={"timestamp": "not the top-level one", "total": 2}),
        track(timestamp="2024-05-01T09:59:58.500+02:00", receivedAt="sent by the client"),
        {"type": "identify", "messageId": "i-1", "userId": "u", "traits": {"plan": "pro"}},
    ]
    with serve_in_thread(tmp_path / "events.db", config=config) as server:
        response = httpx.post(
            f"{server.url}/v1/batch",
            json={"batch": messages, "sentAt": "2024-05-01T10:00:00.000Z"},
            auth=("key-b", ""),
        )
        assert response.json()["stored"] == len(messages)
        wait_until(
            lambda: all(
                s["pending"] == 0 for s in destinations_status(server.url, "key-b").values()
            ),
            20,
            "every destination to handle everything",
        )
    seen = {
        name: {m["messageId"]: m for m in map(received, RecorderDestination.seen[name])}
        for name in names
    }
    assert all(e.wire is not None for e in RecorderDestination.seen["Encoded"])
    assert seen["Encoded"] == seen["Decoded"]
    assert [list(m) for m in seen["Encoded"].values()] == [
        list(m) for m in seen["Decoded"].values()
    ]
    first = seen["Decoded"][messages[0]["messageId"]]
    assert first["originalTimestamp"] == "2024-05-01T09:59:58.500Z"
    assert first["timestamp"] != first["originalTimestamp"]  # corrected by sentAt
    assert seen["Decoded"][messages[1]["messageId"]]["originalTimestamp"] is None
    assert seen["Decoded"][messages[2]["messageId"]]["receivedAt"] != "sent by the client"
    filtered = seen["EncodedFiltered"]
    assert filtered[messages[0]["messageId"]]["properties"] == {"total": 1}
    for message_id, message in seen["Decoded"].items():
        if message_id != messages[0]["messageId"]:
            assert filtered[message_id] == message
