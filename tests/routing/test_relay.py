"""The relay destination forwards to a second collector on 127.0.0.1 with messageIds kept."""

from __future__ import annotations

from pathlib import Path

import httpx

from tracklane.collector import serve_in_thread

from .support import config_of, destinations_status, post_batch, track, wait_until


def test_relay_forwards_every_type_to_another_collector(tmp_path: Path) -> None:
    """All six types reach the upstream collector with messageId, fields and timestamp kept."""
    with serve_in_thread(tmp_path / "upstream.db", ["upstream-key"]) as upstream:
        config = config_of(
            {
                "sources": [{"name": "backend", "write_keys": ["key-1"]}],
                "destinations": [
                    {
                        "name": "Upstream",
                        "type": "relay",
                        "url": upstream.url,
                        "write_key": "upstream-key",
                        "batch_size": 50,
                    }
                ],
            }
        )
        stamp = "2026-01-02T03:04:05.678Z"
        messages = [track(f"u-{i}", timestamp=stamp) for i in range(120)]
        messages += [
            {"type": "identify", "messageId": "m-identify", "userId": "u", "traits": {"a": 1}},
            {
                "type": "page",
                "messageId": "m-page",
                "anonymousId": "anon",
                "name": "Home",
                "category": "Docs",
                "properties": {"p": 1},
            },
            {"type": "screen", "messageId": "m-screen", "userId": "u", "name": "Settings"},
            {
                "type": "group",
                "messageId": "m-group",
                "userId": "u",
                "groupId": "acme",
                "traits": {"seats": 3},
            },
            {"type": "alias", "messageId": "m-alias", "userId": "u", "previousId": "anon"},
            track(
                "u",
                "With Integrations",
                integrations={"All": False, "Upstream": True, "Mixpanel": {"x": 1}},
                context={"ip": "10.0.0.1"},
            ),
        ]
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            post_batch(server.url, "key-1", messages)
            wait_until(
                lambda: (
                    destinations_status(server.url, "key-1")["Upstream"]["delivered"]
                    == len(messages)
                ),
                30,
                "every message relayed",
            )
        got = httpx.get(
            f"{upstream.url}/v1/events", params={"limit": 1000}, auth=("upstream-key", "")
        ).json()["events"]
    assert len(got) == len(messages)
    by_id = {event["messageId"]: event for event in got}
    assert set(by_id) == {m["messageId"] for m in messages}
    first = by_id[messages[0]["messageId"]]
    assert first["originalTimestamp"] == stamp  # as the sender wrote it
    assert first["event"] == "Order Completed"
    assert first["properties"] == {"total": 3}
    assert by_id["m-page"]["category"] == "Docs"
    assert by_id["m-page"]["anonymousId"] == "anon"
    assert by_id["m-group"]["groupId"] == "acme"
    assert by_id["m-alias"]["previousId"] == "anon"
    routed = by_id[messages[-1]["messageId"]]
    assert routed["integrations"] == {"All": False, "Upstream": True, "Mixpanel": {"x": 1}}
    assert routed["context"]["ip"] == "10.0.0.1"
