"""The relay forwards each stored message as its sender sent it, to a real HTTP upstream."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any, Dict, List

from helpers import RecordingServer
from tracklane.collector import serve_in_thread

from .support import config_of, destinations_status, post_batch, wait_until

RUBY = {"name": "analytics-ruby", "version": "2.4.0"}


def sent_by_another_library() -> List[Dict[str, Any]]:
    """Messages as analytics-ruby and a browser would send them, every type, odd fields."""
    context = {"library": RUBY, "ip": "10.0.0.1", "page": {"path": "/ü"}, "key with space": 1}
    return [
        {
            "type": "track",
            "messageId": "ruby-track-1",
            "userId": "u-1",
            "anonymousId": None,
            "event": "Order Completed",
            "properties": {"total": 12.5, "big": 12345678901234567, "nested": {"a": [1, "b"]}},
            "context": context,
            "integrations": {"All": False, "Upstream": True, "Mixpanel": {"apiSecret": "s"}},
            "timestamp": "2023-04-05T06:07:08.912Z",
        },
        {
            "type": "identify",
            "messageId": "ruby-identify-1",
            "userId": "u-1",
            "traits": {"email": "u@example.com"},
            "context": {"library": {"name": "analytics.js", "version": "4.1.0"}},
            "timestamp": "2023-04-05T08:07:08.912+02:00",
            "channel": "browser",
        },
        {
            "type": "page",
            "messageId": "ruby-page-1",
            "anonymousId": "anon-1",
            "name": "Home",
            "category": "Docs",
            "properties": {"path": "/"},
            "context": context,
            "timestamp": "2023-04-05T06:07:09Z",
        },
        {
            "type": "screen",
            "messageId": "ruby-screen-1",
            "userId": "u-1",
            "name": "Settings",
            "context": context,
            "timestamp": "2023-04-05T06:07:10.000Z",
        },
        {
            "type": "group",
            "messageId": "ruby-group-1",
            "userId": "u-1",
            "groupId": "acme",
            "traits": {"seats": 3},
            "context": context,
            "timestamp": "2023-04-05T06:07:11.000Z",
        },
        {
            "type": "alias",
            "messageId": "ruby-alias-1",
            "userId": "u-1",
            "previousId": "anon-1",
            "context": context,
            "timestamp": "2023-04-05T06:07:12.000Z",
        },
    ]


def test_relay_forwards_every_field_as_the_sender_sent_it(tmp_path: Path) -> None:
    """messageId, context.library, timestamps, integrations and unknown fields reach the
    upstream unchanged; sentAt is the relay client's, and nothing the collector added
    (receivedAt, originalTimestamp, the first request's sentAt) goes along."""
    upstream = RecordingServer()
    try:
        config = config_of(
            {
                "sources": [{"name": "backend", "write_keys": ["key-1"]}],
                "destinations": [
                    {
                        "name": "Upstream",
                        "type": "relay",
                        "url": upstream.url,
                        "write_key": "upstream-key",
                    }
                ],
            }
        )
        messages = sent_by_another_library()
        without_time = {"type": "track", "messageId": "curl-1", "userId": "u", "event": "E"}
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            post_batch(server.url, "key-1", [*messages, without_time])
            wait_until(
                lambda: destinations_status(server.url, "key-1")["Upstream"]["delivered"] == 7,
                30,
                "every message relayed",
            )
        requests = [r for r in upstream.requests if r.path == "/v1/batch"]
    finally:
        upstream.close()
    got = {message["messageId"]: message for r in requests for message in r.batch}
    for message in messages:
        assert got[message["messageId"]] == message
    relayed = got["curl-1"]
    assert relayed.keys() == {*without_time, "timestamp"}  # the time the collector noted
    assert dt.datetime.fromisoformat(relayed["timestamp"].replace("Z", "+00:00")).year >= 2024
    for request in requests:
        sent_at = dt.datetime.fromisoformat(request.json["sentAt"])
        assert abs((dt.datetime.now(dt.timezone.utc) - sent_at).total_seconds()) < 60
        auth = base64.b64decode(request.headers["authorization"].split()[1]).decode()
        assert auth == "upstream-key:"
