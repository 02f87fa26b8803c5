"""The debugger's per-destination delivery status, from a routing collector and real receivers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest

from tracklane.collector import CollectorServer, serve_in_thread

from .support import WebhookReceiver, config_of, destinations_status, post_batch, track, wait_until

KEY = "key-1"


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Tuple[CollectorServer, WebhookReceiver, WebhookReceiver]]:
    """A collector routing to a receiver that accepts and one that answers 400."""
    good, bad = WebhookReceiver(), WebhookReceiver(status=400)
    config = config_of(
        {
            "sources": [{"name": "backend", "write_keys": [KEY]}],
            "destinations": [
                {"name": "Good", "type": "webhook", "url": good.url, "backoff_base": 0.05},
                {"name": "Bad", "type": "webhook", "url": bad.url, "backoff_base": 0.05},
            ],
        }
    )
    try:
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            yield server, good, bad
    finally:
        good.close()
        bad.close()


def _by_destination(items: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {item["destination"]: item for item in items}


def test_delivered_dead_lettered_and_skipped_per_destination(
    routed: Tuple[CollectorServer, WebhookReceiver, WebhookReceiver],
) -> None:
    """Each event lists each destination: delivered, dead-lettered with the 400, or skipped."""
    server, good, _bad = routed
    sent = track("ada", "Routed")
    only_bad = track("bob", "Only Bad", integrations={"Good": False})
    post_batch(server.url, KEY, [sent, only_bad])
    assert good.wait_for_unique(1, 10) == 1
    wait_until(
        lambda: destinations_status(server.url, KEY)["Bad"]["deadLettered"] == 2, 10, "dead letters"
    )
    wait_until(lambda: destinations_status(server.url, KEY)["Good"]["skipped"] == 1, 10, "skip")

    listed = httpx.get(f"{server.url}/debugger/api/events", auth=(KEY, "")).json()["events"]
    by_event = {item["event"]["event"]: item for item in listed}
    routed_to = _by_destination(by_event["Routed"]["deliveries"])
    assert routed_to["Good"]["status"] == "delivered"
    assert routed_to["Bad"]["status"] == "dead-lettered"
    assert routed_to["Bad"]["attempts"] == 1
    assert "400" in routed_to["Bad"]["lastError"]
    skipped = _by_destination(by_event["Only Bad"]["deliveries"])
    assert skipped["Good"]["status"] == "skipped"
    assert skipped["Bad"]["status"] == "dead-lettered"

    seq = by_event["Routed"]["seq"]
    one = httpx.get(f"{server.url}/debugger/api/events/{seq}/deliveries", auth=(KEY, ""))
    assert one.status_code == 200
    assert _by_destination(one.json()["deliveries"]) == routed_to
    missing = httpx.get(f"{server.url}/debugger/api/events/999999/deliveries", auth=(KEY, ""))
    assert missing.status_code == 404


def test_an_event_waiting_for_a_retry_is_pending_with_its_next_attempt(tmp_path: Path) -> None:
    """A 500 leaves the event pending for that destination, with attempts and the error."""
    failing = WebhookReceiver(status=500)
    config = config_of(
        {
            "sources": [{"name": "backend", "write_keys": [KEY]}],
            "destinations": [
                {"name": "Flaky", "type": "webhook", "url": failing.url, "backoff_base": 60.0}
            ],
        }
    )
    try:
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            post_batch(server.url, KEY, [track("ada", "Waiting")])
            wait_until(lambda: failing.failures >= 1, 10, "a failed attempt")

            def status() -> Dict[str, Any]:
                items = httpx.get(f"{server.url}/debugger/api/events", auth=(KEY, "")).json()
                return dict(items["events"][0]["deliveries"][0])

            wait_until(lambda: status()["attempts"] == 1, 10, "the retry row")
            found = status()
            assert found["status"] == "pending"
            assert found["nextAttempt"].endswith("Z")
            assert "500" in found["lastError"]
    finally:
        failing.close()


def test_without_routing_events_carry_no_deliveries(tmp_path: Path) -> None:
    """A collector that does not route adds no delivery field and has no per-event route."""
    with serve_in_thread(tmp_path / "events.db") as server:
        post_batch(server.url, KEY, [track()])
        item = httpx.get(f"{server.url}/debugger/api/events").json()["events"][0]
        assert "deliveries" not in item
        one = httpx.get(f"{server.url}/debugger/api/events/{item['seq']}/deliveries")
        assert one.status_code == 404


def test_a_destination_added_later_shows_older_events_as_not_routed(tmp_path: Path) -> None:
    """Events stored before a destination existed are "not-routed" there, never "delivered"."""
    old, new = WebhookReceiver(), WebhookReceiver()
    source = {"name": "backend", "write_keys": [KEY]}
    first = {"name": "Old", "type": "webhook", "url": old.url}
    second = {"name": "New", "type": "webhook", "url": new.url}
    try:
        with serve_in_thread(
            tmp_path / "events.db", config=config_of({"sources": [source], "destinations": [first]})
        ) as server:
            post_batch(server.url, KEY, [track("ada", "Before")])
            assert old.wait_for_unique(1, 10) == 1
        config = config_of({"sources": [source], "destinations": [first, second]})
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            post_batch(server.url, KEY, [track("bob", "After")])
            assert new.wait_for_unique(1, 10) == 1
            wait_until(
                lambda: destinations_status(server.url, KEY)["New"]["delivered"] == 1, 10, "count"
            )
            listed = httpx.get(f"{server.url}/debugger/api/events", auth=(KEY, "")).json()
            by_event = {item["event"]["event"]: item for item in listed["events"]}
            before = _by_destination(by_event["Before"]["deliveries"])
            assert before["Old"]["status"] == "delivered"
            assert before["New"]["status"] == "not-routed"
            assert "added after" in before["New"]["reason"]
            after = _by_destination(by_event["After"]["deliveries"])
            assert after["New"]["status"] == "delivered"
            status = destinations_status(server.url, KEY)["New"]
            assert (status["delivered"], status["pending"], status["lagSeconds"]) == (1, 0, 0)
        assert [m["event"] for r in new.receipts for m in r.messages] == ["After"]
    finally:
        old.close()
        new.close()
