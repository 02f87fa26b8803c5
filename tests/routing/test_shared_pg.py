"""Two collectors routing from one PostgreSQL store; one is killed with SIGKILL mid-run."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import httpx
import pytest

from pg import PostgresServer

from .processes import CollectorProcess
from .support import WebhookReceiver, destinations_status, wait_until

EVENTS = 5_000
LEASE = 2.0
HOLD_AFTER = 300  # messages collector "a" delivers before its requests are held


def _serve(dsn: str, config: Path) -> CollectorProcess:
    """``tracklane serve --db <dsn> --config <file>`` in a subprocess."""
    return CollectorProcess(["tracklane.cli", "serve", "--db", dsn], config)


def _config(path: Path, hook: str, collector: str) -> Path:
    path.write_text(
        f"""
[outbox]
lease_seconds = {LEASE}

[[sources]]
name = "backend"
write_keys = ["key-1"]

[[destinations]]
name = "Hooks"
type = "webhook"
url = "{hook}"
batch_size = 10
concurrency = 4
timeout = 30
max_attempts = 1000
backoff_base = 0.02
backoff_cap = 0.2
headers = {{ "X-Tracklane-Collector" = "{collector}" }}
"""
    )
    return path


@pytest.mark.slow
def test_two_collectors_share_one_store_and_survive_a_sigkill(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Every messageId reaches the webhook; duplicates and takeovers come only from the
    killed collector's claims, and no message is in two collectors' hands at once."""
    dsn = postgres.create_database("shared")
    lock = threading.Lock()
    delivered_by_a: List[int] = [0]
    held: Set[str] = set()
    release = threading.Event()
    killed_at: List[float] = []

    def gate(headers: Dict[str, str], body: bytes) -> Optional[int]:
        """Hold collector a's requests once it has delivered HOLD_AFTER messages."""
        if headers.get("x-tracklane-collector") != "a":
            return None
        ids = [m["messageId"] for m in json.loads(body)["batch"]]
        with lock:
            if delivered_by_a[0] < HOLD_AFTER:
                delivered_by_a[0] += len(ids)
                return None
            held.update(ids)
        release.wait(60)
        return 503  # its sender is dead by now: nothing counts as accepted

    hook = WebhookReceiver(fail_ratio=0.1, gate=gate)
    a = _serve(dsn, _config(tmp_path / "a.toml", hook.url, "a"))
    b: Optional[CollectorProcess] = None
    sent: List[str] = []
    try:
        b = _serve(dsn, _config(tmp_path / "b.toml", hook.url, "b"))
        for index in range(EVENTS // 100):
            batch = [
                {"type": "track", "userId": "u", "event": "E", "messageId": str(uuid.uuid4())}
                for _ in range(100)
            ]
            url = (a if index % 2 else b).url
            response = httpx.post(f"{url}/v1/batch", json={"batch": batch}, auth=("key-1", ""))
            assert response.json()["stored"] == 100
            sent.extend(m["messageId"] for m in batch)
        wait_until(lambda: bool(held), 30, "collector a's requests to be held")
        # Held longer than a lease: a's heartbeat keeps its claims from being taken over.
        time.sleep(LEASE * 1.5)
        with lock:
            held_before_kill = set(held)
        a.kill()
        killed_at.append(time.monotonic())
        release.set()
        assert hook.wait_for_unique(EVENTS, 40) == EVENTS
        survivor = b.url
        wait_until(
            lambda: destinations_status(survivor, "key-1")["Hooks"]["pending"] == 0,
            30,
            "the outbox to drain",
        )
        status = destinations_status(survivor, "key-1")["Hooks"]
        # The debugger reads the same PostgreSQL outbox: the newest events show delivered.
        shown = httpx.get(
            f"{survivor}/debugger/api/events", params={"limit": 5}, auth=("key-1", "")
        ).json()["events"]
        assert [item["deliveries"] for item in shown] == [
            [{"destination": "Hooks", "attempts": None, "status": "delivered"}]
        ] * 5
    finally:
        release.set()
        a.close()
        if b is not None:
            b.close()
        hook.close()

    senders: Dict[str, List[Tuple[str, float]]] = defaultdict(list)
    for receipt in hook.receipts:
        for message_id in receipt.message_ids:
            senders[message_id].append((receipt.headers["x-tracklane-collector"], receipt.at))
    assert set(senders) == set(sent)
    kill = killed_at[0]
    by_a = {m for m, got in senders.items() if any(who == "a" for who, _ in got)}
    by_b = {m for m, got in senders.items() if any(who == "b" for who, _ in got)}
    assert len(by_a) >= HOLD_AFTER // 2  # both shared the work (10% of requests fail)
    assert by_b
    # a's held requests were never accepted from a; b delivered them only after the kill.
    for message_id in held_before_kill:
        assert all(who == "b" and at > kill for who, at in senders[message_id])
    for message_id, got in senders.items():
        if len(got) > 1:
            # Only a claim of the killed collector is delivered twice: once by a (before the
            # kill), then by b once a's lease expired.
            assert message_id in by_a, f"{message_id} duplicated without a kill"
            assert all(at < kill for who, at in got if who == "a")
            assert all(at > kill for who, at in got if who == "b")
    assert (status["deadLettered"], status["pending"]) == (0, 0)
    assert status["delivered"] >= EVENTS
