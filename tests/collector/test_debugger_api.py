"""The debugger's HTTP side: page, assets, cursor API, filters, refused messages, who may read.

Every test that stores events runs against both stores, SQLite and PostgreSQL.
"""

from __future__ import annotations

import gzip
import importlib.resources
import re
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from tracklane.collector import CollectorServer, serve_in_thread
from tracklane.collector._rejects import RejectLog, reject_kind, source_label

from .support import KEYS, MakeMessage

API = "/debugger/api"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty event store: a SQLite file, or a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    return str(request.getfixturevalue("postgres").create_database("debugger"))


@pytest.fixture
def server(location: str) -> Iterator[CollectorServer]:
    """A fresh open collector, so refusals and sequences belong to this test alone."""
    with serve_in_thread(location) as collector:
        yield collector


@pytest.fixture
def http(server: CollectorServer) -> Iterator[httpx.Client]:
    """A client of ``server`` sending with the write key ``wk-debugger-test``."""
    with httpx.Client(base_url=server.url, auth=("wk-debugger-test", ""), timeout=10) as client:
        yield client


def _events(http: httpx.Client, **params: Any) -> List[Dict[str, Any]]:
    response = http.get(f"{API}/events", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def _rejected(http: httpx.Client, **params: Any) -> List[Dict[str, Any]]:
    response = http.get(f"{API}/rejected", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["rejected"])


def test_page_and_assets_are_served_from_the_package(http: httpx.Client) -> None:
    """GET / is the page; its script and styles come from the package, no CDN."""
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/debugger/static/debugger.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text
    assert "https://" not in page.text
    static = importlib.resources.files("tracklane.collector.debugger").joinpath("static")
    assets = [("debugger.js", "javascript"), ("payload.js", "javascript"), ("debugger.css", "css")]
    for name, kind in assets:
        asset = http.get(f"/debugger/static/{name}")
        assert asset.status_code == 200
        assert kind in asset.headers["content-type"]
        assert asset.content == static.joinpath(name).read_bytes()


def test_cursor_after_and_before_with_seq(http: httpx.Client, make_message: MakeMessage) -> None:
    """Newest first by default; after=<seq> oldest first; before=<seq> newest first."""
    sent = [make_message(event=f"E{n}") for n in range(6)]
    assert http.post("/v1/batch", json={"batch": sent}).status_code == 200
    newest = _events(http)
    assert [e["event"]["event"] for e in newest] == [f"E{n}" for n in reversed(range(6))]
    seqs = [e["seq"] for e in newest]
    assert all("seq" not in e["event"] for e in newest)
    later = _events(http, after=seqs[3], limit=2)
    assert [e["seq"] for e in later] == [seqs[2], seqs[1]]
    earlier = _events(http, before=seqs[3])
    assert [e["seq"] for e in earlier] == seqs[4:]
    assert _events(http, after=seqs[0]) == []
    assert newest[0]["source"] == source_label("wk-debugger-test") == "wk-deb\u2026"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"type": "identify"}, ["identify"]),
        ({"event": "Bought"}, ["Bought"]),
        ({"user": "anon-9"}, ["Viewed"]),
        ({"q": "VIOLET"}, ["Bought"]),
        ({"source": "wk-deb\u2026"}, ["Viewed", "Bought", "identify"]),
        ({"source": "other\u2026"}, []),
        ({"type": "track", "q": "nothing like this"}, []),
    ],
)
def test_filters(
    http: httpx.Client, make_message: MakeMessage, params: Dict[str, str], expected: List[str]
) -> None:
    """type, event (exact), user (either id), q (text, any case) and source narrow the list."""
    batch = [
        make_message("identify"),
        make_message(event="Bought", properties={"colour": "violet"}),
        make_message(event="Viewed", userId=..., anonymousId="anon-9"),
    ]
    http.post("/v1/batch", json={"batch": batch}).raise_for_status()
    found = _events(http, **params)
    assert [e["event"].get("event", e["event"]["type"]) for e in found] == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"after": "x"}, "'after' must be a sequence number"),
        ({"before": "9" * 20}, "'before' must be a sequence number (0 to 9223372036854775807)"),
        ({"after": "1", "before": "2"}, "either 'after' or 'before'"),
        ({"limit": "0"}, "'limit' must be a whole number from 1 to 1000"),
        ({"type": "click"}, "unknown type 'click'"),
        ({"colour": "red"}, "unknown query parameter 'colour'"),
    ],
)
def test_bad_queries_are_refused_naming_the_parameter(
    http: httpx.Client, params: Dict[str, str], message: str
) -> None:
    """A wrong parameter gets 400 with an error naming it."""
    response = http.get(f"{API}/events", params=params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_stored_message_keeps_the_batch_sent_at(
    http: httpx.Client, make_message: MakeMessage
) -> None:
    """The batch's sentAt is kept with each message, so the page shows sent/received/corrected."""
    message = make_message(timestamp="2024-01-01T00:00:00.000Z")
    body = {"batch": [message], "sentAt": "2024-01-01T00:00:05.000Z"}
    http.post("/v1/batch", json=body).raise_for_status()
    [event] = _events(http)
    assert event["event"]["sentAt"] == "2024-01-01T00:00:05.000Z"
    assert event["event"]["originalTimestamp"] == "2024-01-01T00:00:00.000Z"
    assert event["event"]["timestamp"] < event["event"]["receivedAt"]


def test_messages_refused_in_a_batch_are_recorded_with_their_reason(
    http: httpx.Client, make_message: MakeMessage
) -> None:
    """Invalid and oversize messages of a batch are kept with reason, payload and index."""
    invalid = make_message(userId=..., event="No One")
    oversize = make_message(properties={"blob": "x" * 40_000})
    batch = [make_message(), invalid, oversize]
    answer = http.post("/v1/batch", json={"batch": batch, "writeKey": "wk-debugger-test"})
    assert answer.json()["stored"] == 1
    first, second = _rejected(http)  # newest first: the oversize one was refused last
    assert (first["index"], first["kind"], first["payload"]) == (2, "oversize", None)
    assert "over the 32768-byte limit" in first["reason"]
    assert first["excerpt"].startswith("{")
    assert "more bytes" in first["excerpt"]
    assert (second["index"], second["kind"]) == (1, "invalid")
    assert second["reason"] == "missing both 'userId' and 'anonymousId'"
    assert second["payload"] == invalid
    assert second["messageId"] == invalid["messageId"]
    assert second["source"] == "wk-deb\u2026"
    assert second["path"] == "/v1/batch"
    assert "writeKey" not in str(first) + str(second)
    [event] = _events(http)  # refusals and events share one time format (the page merges them)
    for record in (first, second, event["event"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["receivedAt"])


def test_whole_requests_refused_are_recorded(http: httpx.Client) -> None:
    """Invalid JSON (also gzipped) and a body over the limit are recorded as one refusal each."""
    http.post("/v1/batch", content=b'{"batch": [', headers={"content-type": "application/json"})
    http.post(
        "/v1/track",
        content=gzip.compress(b"not json at all"),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    http.post("/v1/batch", content=b"x" * 600_000)
    big, gzipped, broken = _rejected(http)
    assert big["kind"] == "oversize"
    assert big["status"] == 400
    assert "over the 500000-byte limit" in big["reason"]
    assert gzipped["excerpt"] == "not json at all"
    assert gzipped["path"] == "/v1/track"
    assert gzipped["reason"].startswith("invalid JSON")
    assert broken["excerpt"] == '{"batch": ['
    assert broken["kind"] == "invalid"


def test_accepted_requests_and_server_failures_are_not_recorded(
    http: httpx.Client, make_message: MakeMessage
) -> None:
    """Nothing is recorded for a batch stored whole."""
    http.post("/v1/batch", json={"batch": [make_message()]}).raise_for_status()
    http.post("/v1/track", json=make_message()).raise_for_status()
    assert _rejected(http) == []


def test_rejected_cursor_and_filters(http: httpx.Client, make_message: MakeMessage) -> None:
    """The refusals take the same cursor and filters as the events."""
    for n in range(4):
        http.post("/v1/batch", json={"batch": [make_message(event=f"Bad {n}", userId=...)]})
    every = _rejected(http)
    assert [r["payload"]["event"] for r in every] == ["Bad 3", "Bad 2", "Bad 1", "Bad 0"]
    after = _rejected(http, after=every[2]["seq"])
    assert [r["payload"]["event"] for r in after] == ["Bad 2", "Bad 3"]
    assert [r["payload"]["event"] for r in _rejected(http, event="Bad 1")] == ["Bad 1"]
    assert [r["payload"]["event"] for r in _rejected(http, q="bad 0")] == ["Bad 0"]
    assert _rejected(http, type="identify") == []


def test_keyed_collector_asks_readers_for_a_key(location: str, make_message: MakeMessage) -> None:
    """With write keys, page and API need one; a reader sees its own key's events and refusals,
    and those sent with an unknown key, never another configured key's."""
    alpha, beta = KEYS
    server = serve_in_thread(location, KEYS)
    with server, httpx.Client(base_url=server.url, timeout=10) as http:
        page = http.get("/")
        assert page.status_code == 401
        assert page.headers["www-authenticate"].startswith("Basic")
        assert http.get("/", auth=("wrong", "")).status_code == 401
        assert http.get(f"{API}/events").status_code == 401
        assert http.get("/", auth=(alpha, "")).status_code == 200
        for key in (alpha, beta):
            body = {"batch": [make_message(event=key), make_message(userId=...)]}
            http.post("/v1/batch", json=body, auth=(key, "")).raise_for_status()
        typo = http.post("/v1/batch", json={"batch": [make_message()]}, auth=("key-alpah", ""))
        assert typo.status_code == 401
        events = http.get(f"{API}/events", auth=(alpha, "")).json()["events"]
        assert [e["event"]["event"] for e in events] == [alpha]
        refused = http.get(f"{API}/rejected", auth=(alpha, "")).json()["rejected"]
        assert [(r["kind"], r["source"]) for r in refused] == [
            ("write key", "key-al\u2026"),
            ("invalid", "key-al\u2026"),
        ]
        assert refused[0]["reason"] == "unknown write key"
        beta_view = http.get(f"{API}/rejected", auth=(beta, "")).json()["rejected"]
        assert [r["kind"] for r in beta_view] == ["write key", "invalid"]
        assert beta_view[1]["source"] == "key-be\u2026"


def test_reject_log_is_a_bounded_ring() -> None:
    """The log keeps the latest ``capacity`` refusals; seq keeps growing; total counts all."""
    log = RejectLog(capacity=3)
    for n in range(5):
        log.add(
            received_at=f"t{n}", status=400, kind="invalid", reason=str(n), path="/", write_key=None
        )
    assert [r.reason for r in log.page()] == ["4", "3", "2"]
    assert [r.seq for r in log.page(after=3)] == [4, 5]
    assert [r.reason for r in log.page(before=5, limit=1)] == ["3"]
    assert (log.total, log.last_seq) == (5, 5)
    with pytest.raises(ValueError, match="capacity"):
        RejectLog(capacity=0)


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (401, "unknown write key", "write key"),
        (400, "message is 40000 bytes, over the 32768-byte limit", "oversize"),
        (400, "request body is over the 500000-byte limit (inflated)", "oversize"),
        (400, "missing 'type'", "invalid"),
    ],
)
def test_reject_kinds(status: int, reason: str, kind: str) -> None:
    """Refusals are classed as the page marks them."""
    assert reject_kind(status, reason) == kind


def test_source_labels_hide_most_of_the_key() -> None:
    """The page shows a write key's first six characters only."""
    assert source_label("abcdefghijkl") == "abcdef\u2026"
    assert source_label("short") == "short"
    assert source_label("") == source_label(None) == "(none)"
    assert str(uuid.uuid4()) not in source_label(str(uuid.uuid4()))
