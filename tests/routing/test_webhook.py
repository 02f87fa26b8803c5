"""The webhook destination against a real receiver: signature, headers, retries, dead letters."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import pytest

from tracklane._cli import main
from tracklane.collector import serve_in_thread
from tracklane.collector.destinations.webhook import retry_after_seconds

from .support import (
    WebhookReceiver,
    config_of,
    destinations_status,
    post_batch,
    signature,
    track,
    wait_until,
)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1."""
    hook = WebhookReceiver()
    yield hook
    hook.close()


def _config(url: str, **settings: object) -> object:
    return config_of(
        {
            "sources": [{"name": "backend", "write_keys": ["key-1"]}],
            "destinations": [
                {
                    "name": "Hooks",
                    "type": "webhook",
                    "url": url,
                    "backoff_base": 0.05,
                    "backoff_cap": 0.2,
                    **settings,
                }
            ],
        }
    )


def test_each_message_is_signed_and_carries_its_id(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Each POST is one message with X-Message-Id, custom headers and a valid X-Signature."""
    config = _config(receiver.url, secret="s3cret", headers={"X-Team": "growth"})
    messages = [track(f"u-{i}") for i in range(5)]
    with serve_in_thread(tmp_path / "events.db", config=config) as server:
        post_batch(server.url, "key-1", messages)
        assert receiver.wait_for_unique(5, 10) == 5
    for receipt in receiver.receipts:
        (message,) = receipt.messages
        assert receipt.headers["x-message-id"] == message["messageId"]
        assert receipt.headers["x-signature"] == signature("s3cret", receipt.body)
        assert receipt.headers["x-team"] == "growth"
        assert receipt.headers["content-type"] == "application/json"
        assert message["receivedAt"].endswith("Z")
    sent = {m["messageId"]: m for m in messages}
    for receipt in receiver.receipts:
        (message,) = receipt.messages
        assert message["properties"] == sent[message["messageId"]]["properties"]


def test_batches_are_signed_and_carry_a_stable_batch_id(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """With batch_size, messages arrive as {"batch": [...]} with X-Batch-Id and X-Signature."""
    config = _config(receiver.url, secret="k", batch_size=10, concurrency=1)
    with serve_in_thread(tmp_path / "events.db", config=config) as server:
        post_batch(server.url, "key-1", [track() for _ in range(25)])
        assert receiver.wait_for_unique(25, 10) == 25
    assert sorted(len(r.messages) for r in receiver.receipts) == [5, 10, 10]
    for receipt in receiver.receipts:
        assert receipt.headers["x-signature"] == signature("k", receipt.body)
        assert len(receipt.headers["x-batch-id"]) == 64


def test_failures_are_retried_until_delivered(tmp_path: Path) -> None:
    """A receiver failing 50% of requests still gets every message; failures are counted."""
    hook = WebhookReceiver(fail_ratio=0.5)
    try:
        config = _config(hook.url, batch_size=5, max_attempts=1000)  # 0.5**10 is not rare
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            messages = [track() for _ in range(200)]
            post_batch(server.url, "key-1", messages)
            assert hook.wait_for_unique(200, 30) == 200
            wait_until(
                lambda: destinations_status(server.url, "key-1")["Hooks"]["delivered"] == 200,
                10,
                "delivered to reach 200",
            )
            status = destinations_status(server.url, "key-1")["Hooks"]
        assert set(hook.message_ids()) == {m["messageId"] for m in messages}
        assert len(hook.message_ids()) == 200  # a failed request is never counted as received
        assert hook.failures > 0
        assert status["pending"] == 0
        assert status["deadLettered"] == 0
        assert status["lastError"].startswith("HTTP 500")
    finally:
        hook.close()


def test_a_4xx_is_dead_lettered_at_once_and_replay_sends_it_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 4xx dead-letters the message with its error; ``tracklane replay`` delivers it later."""
    hook = WebhookReceiver(status=422)
    try:
        config = _config(hook.url)
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            messages = [track() for _ in range(3)]
            post_batch(server.url, "key-1", messages)
            wait_until(
                lambda: destinations_status(server.url, "key-1")["Hooks"]["deadLettered"] == 3,
                10,
                "three dead letters",
            )
            assert hook.failures == 3  # one attempt each: a 422 is not retried
            status = destinations_status(server.url, "key-1")["Hooks"]
            assert status["lastError"].startswith("HTTP 422")
            assert status["pending"] == 0
            assert status["delivered"] == 0

            base = ["--url", server.url, "--write-key", "key-1"]
            assert main(["status", *base]) == 0
            table = capsys.readouterr().out
            assert "Hooks" in table
            assert "webhook" in table
            assert "HTTP 422" in table

            import httpx

            dead = httpx.get(
                f"{server.url}/v1/destinations/Hooks/dead-letters", auth=("key-1", "")
            ).json()["deadLetters"]
            assert {d["messageId"] for d in dead} == {m["messageId"] for m in messages}
            assert all(d["lastError"].startswith("HTTP 422") and d["attempts"] == 1 for d in dead)

            hook.status = 200
            assert main(["replay", "--destination", "Hooks", *base]) == 0
            assert "3 dead-lettered message(s) of Hooks sent again" in capsys.readouterr().out
            assert hook.wait_for_unique(3, 10) == 3
            wait_until(
                lambda: destinations_status(server.url, "key-1")["Hooks"]["delivered"] == 3,
                10,
                "the replayed messages to be delivered",
            )
            assert destinations_status(server.url, "key-1")["Hooks"]["deadLettered"] == 0
            assert main(["replay", "--destination", "Nope", *base]) == 1
            assert "no destination is named 'Nope'" in capsys.readouterr().err
    finally:
        hook.close()


def test_retries_exhausted_dead_letter_the_message(tmp_path: Path) -> None:
    """After max_attempts retryable failures a message is dead-lettered with its last error."""
    hook = WebhookReceiver(status=503)
    try:
        config = _config(hook.url, max_attempts=3)
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            post_batch(server.url, "key-1", [track()])
            wait_until(
                lambda: destinations_status(server.url, "key-1")["Hooks"]["deadLettered"] == 1,
                10,
                "a dead letter",
            )
            assert hook.failures == 3
    finally:
        hook.close()


def test_status_needs_a_write_key_when_keys_are_configured(tmp_path: Path) -> None:
    """``GET /v1/destinations`` answers 401 without one of the collector's write keys."""
    import httpx

    with serve_in_thread(tmp_path / "events.db", config=_config("http://127.0.0.1:9/x")) as server:
        assert httpx.get(f"{server.url}/v1/destinations").status_code == 401
        assert httpx.get(f"{server.url}/v1/destinations", auth=("nope", "")).status_code == 401
        assert set(destinations_status(server.url, "key-1")) == {"Hooks"}


def test_retry_after_is_honoured(receiver: WebhookReceiver, tmp_path: Path) -> None:
    """A 429 with Retry-After: 1 delays the retry by at least a second, then it is delivered."""
    receiver.script = [(429, {"Retry-After": "1"})]
    with serve_in_thread(
        tmp_path / "events.db", config=_config(receiver.url, backoff_cap=5)
    ) as server:
        post_batch(server.url, "key-1", [track()])
        assert receiver.wait_for_unique(1, 10) == 1
        first, second = receiver.attempts
        assert second - first >= 0.95
        status = destinations_status(server.url, "key-1")["Hooks"]
    assert status["lastError"].startswith("HTTP 429")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("7", 7.0), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after_header_forms(header: Optional[str], seconds: Optional[float]) -> None:
    """Retry-After is read as seconds or an HTTP date (a past date means now)."""
    assert retry_after_seconds(header) == seconds


def test_a_dead_endpoint_costs_one_timeout_per_claim(tmp_path: Path) -> None:
    """After a request times out, the rest of the claim is not sent; all of it is retried."""
    hook = WebhookReceiver(hang_ratio=1.0, hang_seconds=1.0)
    try:
        config = _config(hook.url, timeout=0.3, concurrency=1, backoff_base=30, backoff_cap=60)
        with serve_in_thread(tmp_path / "events.db", config=config) as server:
            post_batch(server.url, "key-1", [track() for _ in range(20)])
            wait_until(
                lambda: destinations_status(server.url, "key-1")["Hooks"]["failed"] == 20,
                10,
                "all 20 messages to wait for a retry",
            )
            status = destinations_status(server.url, "key-1")["Hooks"]
            assert len(hook.attempts) == 1
            assert status["lastError"].startswith("not sent: ")
            assert "timed out" in status["lastError"]
    finally:
        hook.close()


def test_sent_json_is_the_stored_event_whether_or_not_a_filter_edited_it(
    receiver: WebhookReceiver, tmp_path: Path
) -> None:
    """Unedited messages (sent as SQLite encodes them) and filtered ones match the read API."""
    from tracklane.collector.storage import EventFilter

    config = config_of(
        {
            "sources": [
                {"name": "backend", "write_keys": ["key-1"]},
                {"name": "web", "write_keys": ["key-2"]},
            ],
            "destinations": [
                {"name": "Hooks", "type": "webhook", "url": receiver.url, "batch_size": 10}
            ],
            "filters": [{"source": "backend", "drop_properties": ["email"]}],
        }
    )
    wide = 2**70
    plain = [
        track("ada", properties={"big": wide, "name": "Zoë", "timestamp": "not the top one"}),
        track("bob", integrations={"All": False, "Hooks": {"tier": 2}}),
        track("cy", integrations={"Hooks": False}),  # skipped
        {"type": "identify", "userId": "dee", "traits": {"plan": "pro"}},
    ]
    edited = [track("eve", properties={"email": "e@example.com", "kept": 1})]
    with serve_in_thread(tmp_path / "events.db", config=config) as server:
        post_batch(server.url, "key-2", plain)
        post_batch(server.url, "key-1", edited)
        assert receiver.wait_for_unique(4, 10) == 4
        wait_until(
            lambda: destinations_status(server.url, "key-1")["Hooks"]["skipped"] == 1, 10, "skip"
        )
        stored = {e["messageId"]: e for e in server.storage.query(EventFilter(), 100)}
    got = {m["messageId"]: m for r in receiver.receipts for m in r.messages}
    assert len(got) == 4
    for message_id, message in got.items():
        expected = {k: v for k, v in stored[message_id].items() if k != "seq"}
        if message["userId"] == "eve":
            del expected["properties"]["email"]
        assert message == expected
        assert message["timestamp"] == expected["timestamp"]
        assert "originalTimestamp" in message
        assert message["receivedAt"].endswith("Z")
    assert str(wide).encode() in b"".join(r.body for r in receiver.receipts)
