"""Ingest over real HTTP: endpoints, write keys, size limits, gzip, partial batches, dedupe."""

from __future__ import annotations

import gzip
import json
import time
import uuid
import zlib
from typing import Any, Dict

import httpx
import pytest

from tracklane.collector import CollectorServer

from .support import KEYS, MakeMessage, Message, count_events, list_events


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """50 MB of zeros, gzipped (about 50 KB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(50)) + compressor.flush()


class TestEndpoints:
    @pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
    def test_batch_aliases_store_every_message(
        self, client: httpx.Client, make_message: MakeMessage, path: str
    ) -> None:
        """/v1/batch, /v1/import and /v1/b all store the messages of a batch."""
        batch = [make_message(t) for t in ("track", "identify", "page")]
        response = client.post(path, json={"batch": batch})
        assert response.status_code == 200
        assert response.json() == {"success": True, "stored": 3, "duplicates": 0, "rejected": []}
        assert count_events(client) == 3

    @pytest.mark.parametrize("kind", ["track", "identify", "page", "screen", "group", "alias"])
    def test_single_message_endpoints_store_one_message_typed_by_path(
        self, client: httpx.Client, make_message: MakeMessage, kind: str
    ) -> None:
        """POST /v1/<type> stores its body as one message of that type, whatever it says."""
        message = make_message(kind, type="identify" if kind != "identify" else "track")
        response = client.post(f"/v1/{kind}", json=message)
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1
        [event] = list_events(client)
        assert event["type"] == kind
        assert event["messageId"] == message["messageId"]

    def test_single_message_endpoint_refuses_an_invalid_message(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """An invalid single message gets 400 with the reason, and nothing is stored."""
        response = client.post("/v1/track", json=make_message(event=...))
        assert response.status_code == 400
        assert response.json() == {"success": False, "error": "track requires 'event'"}
        assert count_events(client) == 0

    def test_unknown_paths_and_methods_get_json_errors(self, client: httpx.Client) -> None:
        """Routing errors are JSON like the others (404 for paths, 405 for methods)."""
        assert client.post("/v1/nothing", json={}).json()["success"] is False
        assert client.post("/v1/nothing", json={}).status_code == 404
        response = client.get("/v1/batch")
        assert response.status_code == 405
        assert response.json()["success"] is False


class TestWriteKeys:
    def test_basic_auth_key_is_accepted(
        self, keyed_client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """A configured key given as the Basic auth user name (empty password) is accepted."""
        user = f"u-{uuid.uuid4()}"
        batch = {"batch": [make_message(userId=user)]}
        response = keyed_client.post("/v1/batch", json=batch, auth=(KEYS[0], ""))
        assert response.status_code == 200
        assert response.json()["stored"] == 1
        counted = keyed_client.get("/v1/events/count", params={"userId": user}, auth=(KEYS[0], ""))
        assert counted.json() == {"count": 1}

    def test_body_write_key_is_accepted_and_not_stored(
        self, keyed_client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """A configured key given as ``writeKey`` in the body works, and is not stored."""
        user = f"u-{uuid.uuid4()}"
        body = {"writeKey": KEYS[1], "batch": [make_message(userId=user, writeKey=KEYS[1])]}
        assert keyed_client.post("/v1/batch", json=body).status_code == 200
        single = make_message("identify", userId=user, writeKey=KEYS[1])
        assert keyed_client.post("/v1/identify", json=single).status_code == 200
        events = keyed_client.get("/v1/events", params={"userId": user}, auth=(KEYS[1], ""))
        assert [e["type"] for e in events.json()["events"]] == ["identify", "track"]
        assert all("writeKey" not in event for event in events.json()["events"])

    @pytest.mark.parametrize(
        ("auth", "body_key", "error"),
        [
            (("intruder", ""), None, "unknown write key"),
            (None, "intruder", "unknown write key"),
            (None, None, "missing write key"),
        ],
    )
    def test_unknown_or_missing_key_gets_401_and_nothing_is_stored(
        self,
        keyed_client: httpx.Client,
        make_message: MakeMessage,
        auth: Any,
        body_key: Any,
        error: str,
    ) -> None:
        """With keys configured, an unknown or missing key gets 401 and stores nothing."""
        user = f"u-{uuid.uuid4()}"
        body: Dict[str, Any] = {"batch": [make_message(userId=user)]}
        if body_key is not None:
            body["writeKey"] = body_key
        response = keyed_client.post("/v1/batch", json=body, auth=auth)
        assert response.status_code == 401
        assert response.json() == {"success": False, "error": error}
        assert response.headers["www-authenticate"].startswith("Basic")
        single = keyed_client.post("/v1/track", json=make_message(userId=user), auth=auth)
        assert single.status_code == 401
        for key in KEYS:
            assert keyed_client.get(
                "/v1/events/count", params={"userId": user}, auth=(key, "")
            ).json() == {"count": 0}

    def test_non_basic_authorization_gets_401(
        self, keyed_client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """With keys configured, an Authorization header that is not Basic gets 401."""
        response = keyed_client.post(
            "/v1/batch",
            json={"batch": [make_message()]},
            headers={"Authorization": f"Bearer {KEYS[0]}"},
        )
        assert response.status_code == 401

    def test_without_configured_keys_any_key_or_none_is_accepted(
        self, collector: CollectorServer, make_message: MakeMessage
    ) -> None:
        """With no keys configured, any key, or none at all, is accepted."""
        user = f"u-{uuid.uuid4()}"
        with httpx.Client(base_url=collector.url, timeout=10) as http:
            batch = {"batch": [make_message(userId=user)]}
            assert http.post("/v1/batch", json=batch, auth=("anything", "")).status_code == 200
            batch = {"batch": [make_message(userId=user)]}
            assert http.post("/v1/batch", json=batch).status_code == 200
            assert count_events(http, userId=user) == 2


class TestPartialBatches:
    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"type": ...}, "missing 'type'"),
            ({"type": "purchase"}, "unknown type 'purchase'"),
            ({"userId": ..., "anonymousId": None}, "missing both 'userId' and 'anonymousId'"),
            ({"userId": ""}, "missing both 'userId' and 'anonymousId'"),
            ({"event": ...}, "track requires 'event'"),
            ({"event": 7}, "'event' must be a string"),
            ({"type": "group"}, "group requires 'groupId'"),
            ({"type": "alias"}, "alias requires 'previousId'"),
            ({"type": "alias", "userId": ..., "anonymousId": "a"}, "alias requires 'userId'"),
            ({"timestamp": "yesterday"}, "'timestamp' is not an ISO-8601 time"),
            ({"messageId": 42}, "'messageId' must be a non-empty string"),
            ({"properties": [1, 2]}, "'properties' must be an object"),
            ({"context": "web"}, "'context' must be an object"),
            ({"properties": {"blob": "x" * 33_000}}, "over the 32768-byte limit"),
        ],
    )
    def test_invalid_message_is_rejected_and_the_rest_stored(
        self, client: httpx.Client, make_message: MakeMessage, change: Message, reason: str
    ) -> None:
        """An invalid message is reported with its index and reason; the others are stored."""
        batch = [make_message() for _ in range(10)]
        batch[3] = make_message(**change)
        response = client.post("/v1/batch", json={"batch": batch})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["success"], body["stored"], body["duplicates"]) == (True, 9, 0)
        [rejection] = body["rejected"]
        assert rejection["index"] == 3
        expected_id = batch[3].get("messageId")
        assert rejection["messageId"] == (expected_id if isinstance(expected_id, str) else None)
        assert reason in rejection["reason"]
        assert count_events(client) == 9

    def test_non_object_message_is_rejected(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """A batch entry that is not a JSON object is rejected with a reason."""
        response = client.post("/v1/batch", json={"batch": [make_message(), "track", None]})
        body = response.json()
        assert body["stored"] == 1
        assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
            (1, "message is not a JSON object"),
            (2, "message is not a JSON object"),
        ]

    def test_message_of_exactly_32768_bytes_is_accepted(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """The per-message limit is inclusive: 32,768 serialized bytes pass, 32,769 do not."""
        message = make_message(properties={"pad": ""})
        message["properties"]["pad"] = "x" * (32_768 - len(_compact(message)))
        assert len(_compact(message)) == 32_768
        too_big = make_message(properties={"pad": message["properties"]["pad"] + "x"})
        too_big["messageId"] = message["messageId"][:-1] + "0"
        body = client.post("/v1/batch", json={"batch": [message, too_big]}).json()
        assert body["stored"] == 1
        assert [r["index"] for r in body["rejected"]] == [1]

    def test_batch_with_only_invalid_messages_gets_400(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """When every message is rejected the answer is 400, still listing each reason."""
        batch = [make_message(event=...), make_message(type=...)]
        response = client.post("/v1/batch", json={"batch": batch})
        assert response.status_code == 400
        body = response.json()
        assert body["success"] is False
        assert body["error"] == "all 2 messages were rejected"
        assert [r["index"] for r in body["rejected"]] == [0, 1]

    def test_empty_batch_is_accepted(self, client: httpx.Client) -> None:
        """An empty batch is a successful no-op."""
        response = client.post("/v1/batch", json={"batch": []})
        assert response.json() == {"success": True, "stored": 0, "duplicates": 0, "rejected": []}


class TestDeduplication:
    def test_resent_batch_is_not_stored_twice(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """A retried batch (same messageIds) is acknowledged but stores nothing new."""
        batch = {"batch": [make_message() for _ in range(5)]}
        assert client.post("/v1/batch", json=batch).json()["stored"] == 5
        again = client.post("/v1/batch", json=batch)
        assert again.status_code == 200
        assert again.json() == {"success": True, "stored": 0, "duplicates": 5, "rejected": []}
        assert count_events(client) == 5

    def test_duplicates_inside_one_batch_are_stored_once(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """The same messageId twice in one batch is stored once and counted as a duplicate."""
        message = make_message()
        body = client.post("/v1/batch", json={"batch": [message, message]}).json()
        assert (body["stored"], body["duplicates"]) == (1, 1)

    def test_same_message_id_under_another_key_is_a_different_event(
        self, collector: CollectorServer, make_message: MakeMessage
    ) -> None:
        """Deduplication is per write key: two keys may use the same messageId."""
        message = make_message(userId=f"u-{uuid.uuid4()}")
        with httpx.Client(base_url=collector.url, timeout=10) as http:
            for key in (f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"):
                stored = http.post("/v1/batch", json={"batch": [message]}, auth=(key, ""))
                assert stored.json()["stored"] == 1
            assert count_events(http, userId=message["userId"]) == 2

    def test_message_without_message_id_gets_one(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """A message without messageId is stored with a fresh UUID (so a resend is new)."""
        message = make_message(messageId=...)
        for _ in range(2):
            assert client.post("/v1/batch", json={"batch": [message]}).json()["stored"] == 1
        ids = [event["messageId"] for event in list_events(client)]
        assert len(set(ids)) == 2
        assert all(uuid.UUID(message_id) for message_id in ids)


class TestStoredEvents:
    def test_event_is_the_message_as_received_plus_server_fields(
        self, client: httpx.Client, make_message: MakeMessage
    ) -> None:
        """A read event is the message as sent (big ints, unicode intact) plus receivedAt."""
        message = make_message(
            properties={"big": 3**50, "name": "Zoë ✓", "nested": {"list": [1, 2.5, None]}},
            context={"library": {"name": "tracklane", "version": "0"}},
            integrations={"All": False},
        )
        client.post("/v1/batch", content=_compact({"batch": [message]}))
        [event] = list_events(client)
        server_fields = {"receivedAt", "timestamp", "originalTimestamp", "seq"}
        assert {k: v for k, v in event.items() if k not in server_fields} == message
        assert event["properties"]["big"] == 3**50
        assert isinstance(event["properties"]["big"], int)


def test_gzip_body_is_accepted(client: httpx.Client, make_message: MakeMessage) -> None:
    """A gzip-encoded batch (Content-Encoding: gzip) is inflated and stored."""
    body = gzip.compress(_compact({"batch": [make_message(), make_message()]}))
    response = client.post("/v1/batch", content=body, headers={"Content-Encoding": "gzip"})
    assert response.json()["stored"] == 2


def test_gzip_bomb_is_refused_quickly(client: httpx.Client, gzip_bomb: bytes) -> None:
    """A 50 MB gzip bomb gets 400 for the size limit, without being inflated whole."""
    started = time.monotonic()
    response = client.post("/v1/batch", content=gzip_bomb, headers={"Content-Encoding": "gzip"})
    assert time.monotonic() - started < 5
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": "request body is over the 500000-byte limit (inflated)",
    }
