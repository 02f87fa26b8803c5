"""When the worker sends, without the caller waking it or handing it the GIL needlessly.

The calls that complete a batch wake the worker only when it sleeps for long; while
messages keep coming it wakes by itself when the batch should be full. The caller yields
the GIL only past a quarter-full queue, and a tight loop still drops nothing.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

import tracklane
from helpers import RecordingServer


def _batch_sizes(server: RecordingServer) -> List[int]:
    return [len(r.batch) for r in server.requests if 200 <= r.status < 300]


def test_a_full_batch_after_idle_is_sent_without_waiting_for_the_interval(
    server: RecordingServer,
) -> None:
    """A burst of batch_size messages into an idle client is sent at once, not after 30 s."""
    client = tracklane.Client("k", host=server.url, batch_size=10, flush_interval=30)
    try:
        for i in range(10):
            client.track(user_id=f"u{i}", event="Burst")
        assert len(server.wait_for(10, timeout=5.0)) == 10
    finally:
        client.shutdown(timeout=2)


def test_paced_calls_are_sent_in_full_batches_as_they_fill(server: RecordingServer) -> None:
    """Messages at a steady pace go out in full batches without flush() or the interval."""
    client = tracklane.Client("k", host=server.url, batch_size=20, flush_interval=30)
    try:
        for i in range(100):
            client.track(user_id=f"u{i}", event="Paced", properties={"i": i})
            time.sleep(0.002)  # the pace of the calls, not a synchronisation
        got = server.wait_for(100, timeout=5.0)
        assert [m["properties"]["i"] for m in got] == list(range(100))
        assert _batch_sizes(server) == [20] * 5
    finally:
        client.shutdown(timeout=2)


def test_a_tight_loop_into_a_small_queue_drops_nothing(server: RecordingServer) -> None:
    """A thread calling track() non-stop gives the worker its turns before the queue fills."""
    dropped: List[Dict[str, Any]] = []
    client = tracklane.Client(
        "k",
        host=server.url,
        max_queue_size=10_000,
        batch_size=100,
        on_error=lambda exc, batch: dropped.extend(batch),
    )
    try:
        for i in range(30_000):
            client.track(user_id="u", event="Loop", properties={"i": i})
        assert client.flush(timeout=30)
        stats = client.stats()
        assert stats.dropped == {}
        assert dropped == []
        assert stats.delivered == stats.tracked == 30_000
        assert len(server.accepted()) == 30_000
    finally:
        client.shutdown(timeout=2)
