"""Filters per source and per destination: drops by type and event name, removed properties."""

from __future__ import annotations

from pathlib import Path

from tracklane.collector import serve_in_thread

from .recorder import RecorderDestination
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
