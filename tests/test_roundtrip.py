"""The client against the project's own collector: every call type round-trips."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Iterator

import httpx
import pytest

import tracklane
from tracklane.collector import CollectorServer, serve_in_thread

KEY = "roundtrip-key"


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorServer]:
    """One collector with a write key configured, for the whole module."""
    with serve_in_thread(
        tmp_path_factory.mktemp("collector") / "events.db", write_keys=[KEY]
    ) as srv:
        yield srv


def read(collector: CollectorServer, **filters: str) -> list:
    response = httpx.get(
        f"{collector.url}/v1/events", params={**filters, "limit": "1000"}, auth=(KEY, "")
    )
    response.raise_for_status()
    return list(response.json()["events"])


@pytest.mark.parametrize("gzip", [False, True])
def test_every_call_type_round_trips(collector, gzip):
    """Six calls sent by the client are read back from the collector with their fields."""
    user = f"rt-user-{gzip}"
    client = tracklane.Client(KEY, host=collector.url, gzip=gzip)
    client.identify(user, {"email": "a@example.com"})
    client.track(user, "Bought", {"price": Decimal("9.99")}, integrations={"All": False})
    client.page(user, "Docs", "Intro", {"path": "/docs"})
    client.screen(user, "App", "Home")
    client.group(user, "g-1", {"size": 3})
    client.alias("anon-before", user)
    client.track(user, "Imported", timestamp=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    assert client.shutdown(timeout=10)
    events = {(e["type"], e.get("event")): e for e in read(collector, userId=user)}
    assert set(events) == {
        ("identify", None),
        ("track", "Bought"),
        ("page", None),
        ("screen", None),
        ("group", None),
        ("alias", None),
        ("track", "Imported"),
    }
    assert events["identify", None]["traits"] == {"email": "a@example.com"}
    assert events["track", "Bought"]["properties"] == {"price": "9.99"}
    assert events["track", "Bought"]["integrations"] == {"All": False}
    assert events["page", None]["name"] == "Intro"
    assert events["group", None]["groupId"] == "g-1"
    assert events["alias", None]["previousId"] == "anon-before"
    assert events["track", "Imported"]["originalTimestamp"].startswith("2020-01-01T00:00:00")
    assert events["identify", None]["context"]["library"]["name"] == "tracklane"


def test_a_resent_message_is_stored_once(collector):
    """The same messageId sent twice (a client retry) is stored once."""
    client = tracklane.Client(KEY, host=collector.url)
    for _ in range(2):
        client.track("dedupe-user", "Once", message_id="fixed-message-id-1")
        assert client.flush(timeout=10)
    client.shutdown()
    assert len(read(collector, userId="dedupe-user")) == 1


def test_wrong_write_key_is_reported_not_raised(collector):
    """A key the collector does not know gives a counted, reported rejection (401)."""
    errors: list = []
    client = tracklane.Client(
        "wrong-key", host=collector.url, on_error=lambda e, b: errors.append(e)
    )
    assert client.track("u", "Nope")[0]
    assert client.flush(timeout=10)
    client.shutdown()
    assert client.stats().dropped == {"rejected": 1}
    assert isinstance(errors[0], tracklane.APIError)
    assert errors[0].status_code == 401
