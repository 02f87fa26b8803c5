"""The read API over real HTTP, on SQLite and on PostgreSQL: filters, limits, ordering, keys."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from tracklane.collector import CollectorServer, Storage, serve_in_thread

from .support import KEYS, MakeMessage, Message, count_events, list_events


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> str:
    """The kind of event store this module's servers use: each test runs against both."""
    return str(request.param)


def _location(request: pytest.FixtureRequest, store: str, name: str) -> str:
    if store == "sqlite":
        return str(request.getfixturevalue("tmp_path_factory").mktemp(name) / "events.db")
    return str(request.getfixturevalue("postgres").create_database(name))


@pytest.fixture(scope="module")
def collector(request: pytest.FixtureRequest, store: str) -> Iterator[CollectorServer]:
    """A collector with no write keys configured, on this module's kind of store."""
    with serve_in_thread(_location(request, store, "open")) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(request: pytest.FixtureRequest, store: str) -> Iterator[CollectorServer]:
    """A collector accepting only the write keys in ``KEYS``, on this module's kind of store."""
    with serve_in_thread(_location(request, store, "keyed"), KEYS) as server:
        yield server


@pytest.fixture
def mixed(client: httpx.Client, make_message: MakeMessage) -> List[Message]:
    """Seven stored messages of several types, users and events, sent in this order."""
    batch = [
        make_message("track", userId="ann", event="Signed Up"),
        make_message("track", userId="bob", event="Signed Up"),
        make_message("track", userId=..., anonymousId="anon-7", event="Viewed"),
        make_message("identify", userId="ann"),
        make_message("page", userId=..., anonymousId="anon-7"),
        make_message("group", userId="bob"),
        make_message("alias", userId="ann", previousId="anon-7"),
    ]
    for message in batch:  # one request each, so receivedAt and ids rise in this order
        assert client.post(f"/v1/{message['type']}", json=message).status_code == 200
    return batch


def test_events_are_newest_first(client: httpx.Client, mixed: List[Message]) -> None:
    """Without filters every event comes back, newest first, each with its growing seq."""
    events = list_events(client)
    ids = [event["messageId"] for event in events]
    assert ids == [message["messageId"] for message in reversed(mixed)]
    assert count_events(client) == 7
    seqs = [event["seq"] for event in events]
    assert all(isinstance(seq, int) for seq in seqs)
    assert seqs == sorted(seqs, reverse=True)
    assert len(set(seqs)) == 7


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"type": "track"}, [2, 1, 0]),
        ({"userId": "ann"}, [6, 3, 0]),
        ({"anonymousId": "anon-7"}, [4, 2]),
        ({"event": "Signed Up"}, [1, 0]),
        ({"type": "track", "userId": "bob"}, [1]),
        ({"userId": "nobody"}, []),
    ],
)
def test_filters_select_matching_events(
    client: httpx.Client, mixed: List[Message], params: Dict[str, str], expected: List[int]
) -> None:
    """type, userId, anonymousId and event filter the list and the count alike."""
    ids = [event["messageId"] for event in list_events(client, **params)]
    assert ids == [mixed[index]["messageId"] for index in expected]
    assert count_events(client, **params) == len(expected)


def test_since_filters_on_received_at(client: httpx.Client, mixed: List[Message]) -> None:
    """since keeps events received at or after the given time (any ISO-8601 offset)."""
    events = list_events(client)
    cutoff = events[2]["receivedAt"]  # the third newest
    newer = list_events(client, since=cutoff)
    assert all(event["receivedAt"] >= cutoff for event in newer)
    assert len(newer) >= 3
    assert list_events(client, since="2999-01-01T00:00:00+01:00") == []
    assert count_events(client, since="2000-01-01") == 7


def test_limit_caps_the_newest_events(client: httpx.Client, mixed: List[Message]) -> None:
    """limit returns that many of the newest events."""
    ids = [event["messageId"] for event in list_events(client, limit=2)]
    assert ids == [mixed[6]["messageId"], mixed[5]["messageId"]]


def test_default_limit_is_100(client: httpx.Client, make_message: MakeMessage) -> None:
    """Without limit at most 100 events come back, while the count covers them all."""
    batch = [make_message() for _ in range(105)]
    assert client.post("/v1/batch", json={"batch": batch}).json()["stored"] == 105
    assert len(list_events(client)) == 100
    assert len(list_events(client, limit=10_000)) == 105
    assert count_events(client) == 105


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("limit=0", "'limit' must be a whole number from 1 to 10000"),
        ("limit=10001", "'limit' must be a whole number from 1 to 10000"),
        ("limit=-1", "'limit' must be a whole number"),
        ("limit=ten", "'limit' must be a whole number"),
        ("limit=1.5", "'limit' must be a whole number"),
        ("limit=", "query parameter 'limit' is empty"),
        ("limit=1&limit=2", "query parameter 'limit' is given more than once"),
        ("since=last%20week", "'since' is not an ISO-8601 time"),
        ("type=purchase", "unknown type 'purchase'"),
        ("user_id=ann", "unknown query parameter 'user_id'"),
    ],
)
def test_bad_query_gets_400(client: httpx.Client, query: str, error: str) -> None:
    """Out-of-range limits and malformed filters get 400 saying what is wrong."""
    response = client.get(f"/v1/events?{query}")
    assert response.status_code == 400
    assert error in response.json()["error"]


def test_count_takes_no_limit(client: httpx.Client) -> None:
    """The count endpoint refuses limit (it counts everything that matches)."""
    response = client.get("/v1/events/count", params={"limit": 5})
    assert response.status_code == 400
    assert "unknown query parameter 'limit'" in response.json()["error"]


def test_each_key_reads_only_its_own_events(
    keyed_client: httpx.Client, make_message: MakeMessage
) -> None:
    """With keys configured, reading needs one and returns only that key's events."""
    user = f"u-{uuid.uuid4()}"
    for key in KEYS:
        message = make_message(userId=user, properties={"sentWith": key})
        assert keyed_client.post("/v1/track", json=message, auth=(key, "")).status_code == 200
    for key in KEYS:
        response = keyed_client.get("/v1/events", params={"userId": user}, auth=(key, ""))
        assert [e["properties"]["sentWith"] for e in response.json()["events"]] == [key]
        count = keyed_client.get("/v1/events/count", params={"userId": user}, auth=(key, ""))
        assert count.json() == {"count": 1}


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/count"])
@pytest.mark.parametrize(
    ("auth", "error"),
    [
        (None, "reading events needs a write key (HTTP Basic auth)"),
        (("intruder", ""), "unknown write key"),
    ],
)
def test_reading_without_a_configured_key_gets_401(
    keyed_client: httpx.Client, path: str, auth: Any, error: str
) -> None:
    """With keys configured, reading with no key or an unknown key gets 401."""
    response = keyed_client.get(path, auth=auth)
    assert response.status_code == 401
    assert response.json() == {"success": False, "error": error}


def test_without_configured_keys_reads_see_every_key_unless_one_is_given(
    collector: CollectorServer, make_message: MakeMessage
) -> None:
    """With no keys configured, an anonymous read sees all keys; a Basic key narrows it."""
    user = f"u-{uuid.uuid4()}"
    keys = [f"k-{uuid.uuid4()}" for _ in range(2)]
    with httpx.Client(base_url=collector.url, timeout=10) as http:
        for key in keys:
            http.post("/v1/identify", json=make_message("identify", userId=user), auth=(key, ""))
        assert count_events(http, userId=user) == 2
        counted = http.get("/v1/events/count", params={"userId": user}, auth=(keys[0], ""))
        assert counted.json() == {"count": 1}


def test_health(collector: CollectorServer) -> None:
    """GET /health answers {"ok": true} and, on SQLite once it has started, the pid of the
    writer process committing ingest requests; on PostgreSQL none (each request commits)."""
    if not isinstance(collector.storage, Storage):
        assert httpx.get(f"{collector.url}/health", timeout=10).json() == {
            "ok": True,
            "writer_process": None,
        }
        return
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{collector.url}/health", timeout=10)
        assert response.status_code == 200
        body = response.json()
        assert body["ok"] is True
        if body["writer_process"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert isinstance(body["writer_process"], int)
    command = Path(f"/proc/{body['writer_process']}/cmdline").read_bytes()
    assert b"tracklane-writer" in command


def test_after_follows_new_events_oldest_first(client: httpx.Client, mixed: List[Message]) -> None:
    """``after=<seq>`` returns only later events, oldest first, each with its ``seq``."""
    newest_first = list_events(client)
    seqs = [event["seq"] for event in newest_first]
    assert seqs == sorted(seqs, reverse=True)
    third = newest_first[-3]["seq"]  # the third oldest
    later = list_events(client, after=third)
    assert [e["messageId"] for e in later] == [m["messageId"] for m in mixed[3:]]
    assert [e["seq"] for e in later] == sorted(seqs)[3:]
    assert list_events(client, after=third, limit=2, type="identify") == [later[0]]
    assert list_events(client, after=max(seqs)) == []


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "9" * 19])
def test_bad_after_gets_400(client: httpx.Client, value: str) -> None:
    """An ``after`` that is not a whole number is refused, naming the parameter."""
    response = client.get("/v1/events", params={"after": value})
    assert response.status_code == 400
    assert "'after'" in response.json()["error"]
