"""A long outage with a bounded queue: memory stays bounded and every drop is counted.

Nothing listens on the client's port for the whole test (connection refused), and the
retry budget is effectively unlimited, so the first batch stays in flight and the queue
fills to ``max_queue_size``. The loop then tracks 50,000 events; the overflow policy decides
which are dropped, ``stats()`` and ``on_error`` say how many and why.

The memory bound: once the queue is full, tracking more may not grow memory. Across the
second half of the loop (25,000 calls, all against a full queue) the traced memory may grow
by less than **one full queue's worth**: ``max_queue_size * (encoded message size + 41 bytes
of bytes-object and deque-slot overhead)``, about 1.9 MB here. That is generous (the
measured growth is a few KB) yet five times smaller than what keeping the 25,000 dropped
messages would cost, so an unbounded queue, or any leak of the dropped messages, a copy in
a log record or a callback's closure, fails it.
"""

from __future__ import annotations

import gc
import socket
import sys
import time
import tracemalloc

import orjson
import pytest

import tracklane

pytestmark = pytest.mark.slow

TOTAL = 50_000
QUEUE = 5_000
BATCH = 100
OVERHEAD = sys.getsizeof(b"") + 8  # a bytes object's header, plus its pointer in the deque

QUEUE_FULL, SHUTDOWN, OTHER = 1, 2, 3


@pytest.fixture
def refused_url():
    """A URL on 127.0.0.1 whose port is bound but not listening: every connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def outage_client(url, overflow="drop_newest", on_error=None):
    """A client whose first batch retries for the whole test against ``url``."""
    return tracklane.Client(
        "k",
        host=url,
        max_queue_size=QUEUE,
        batch_size=BATCH,
        overflow=overflow,
        flush_interval=0.05,
        timeout=1,
        max_retries=10**6,  # the outage outlasts any retry budget we would tolerate
        max_total_backoff=3600,
        backoff_base=0.05,
        backoff_cap=0.1,
        on_error=on_error,
    )


@pytest.mark.parametrize("overflow", ["drop_newest", "drop_oldest"])
def test_long_outage_keeps_memory_bounded_and_counts_every_drop(refused_url, overflow, measure):
    """50,000 events into a 5,000-slot queue during an outage: bounded memory, exact counts."""
    outcome = bytearray(TOTAL)  # per event: how on_error heard of it (0: not at all)
    queued = bytearray(TOTAL)  # per event: what track() returned

    def on_error(exc, batch):
        code = {tracklane.QueueFullError: QUEUE_FULL, tracklane.ShutdownError: SHUTDOWN}
        for message in batch:
            n = message["properties"]["n"]
            assert outcome[n] == 0, "on_error heard of one message twice"
            outcome[n] = code.get(type(exc), OTHER)

    client = outage_client(refused_url, overflow, on_error)
    payload = "x" * 200
    _, sample = client.track("user-1", "Outage", {"n": 0, "payload": payload})
    queued[0] = 1
    message_size = len(orjson.dumps(sample)) + OVERHEAD
    bound = QUEUE * message_size
    started = time.monotonic()
    try:
        gc.collect()
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        for n in range(1, TOTAL):
            if n == TOTAL // 2:
                gc.collect()
                middle = tracemalloc.get_traced_memory()[0]
            ok, _ = client.track("user-1", "Outage", {"n": n, "payload": payload})
            queued[n] = ok
        gc.collect()
        end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    loop_seconds = time.monotonic() - started

    during = client.stats()
    accepted = sum(queued)
    assert during.tracked == TOTAL
    assert during.delivered == 0
    assert during.pending <= QUEUE + BATCH
    if overflow == "drop_newest":
        assert QUEUE <= accepted <= QUEUE + BATCH
        assert during.dropped == {"queue_full": TOTAL - accepted}
        assert all(queued[:QUEUE]), "the first ones fill the queue"
        # Past that, a call is accepted only where the worker had just taken its first
        # batch (up to one batch of room, once); every other new call is refused.
        assert sum(queued[QUEUE:]) == accepted - QUEUE <= BATCH
    else:
        assert accepted == TOTAL, "drop_oldest accepts every new message"
        assert QUEUE < during.pending <= QUEUE + BATCH
        assert during.dropped == {"queue_full": TOTAL - during.pending}
    assert during.tracked == during.pending + sum(during.dropped.values())

    growth = end - middle
    assert growth < bound, f"memory grew {growth} bytes with a full queue (bound {bound})"

    result = client.shutdown(timeout=1)
    final = result.stats
    assert final.pending == 0
    assert final.delivered == 0
    assert final.dropped == {"queue_full": during.dropped["queue_full"], "shutdown": during.pending}
    assert final.tracked == sum(final.dropped.values())
    # on_error heard of every message, once, with the reason the counters give.
    assert outcome.count(0) == 0
    assert outcome.count(QUEUE_FULL) == final.dropped["queue_full"]
    assert outcome.count(SHUTDOWN) == final.dropped["shutdown"]
    if overflow == "drop_newest":
        assert outcome == bytes(SHUTDOWN if ok else QUEUE_FULL for ok in queued)
    else:
        # The first batch stayed in flight; the oldest queued ones made room for the newest.
        in_flight = final.dropped["shutdown"] - QUEUE
        assert 1 <= in_flight <= BATCH
        # The newest messages were still queued at shutdown; the batch in flight was one of
        # the first ones (which exactly depends on when the worker first got the GIL).
        assert outcome[-QUEUE:] == bytes([SHUTDOWN]) * QUEUE
        assert outcome[: TOTAL - QUEUE].count(SHUTDOWN) == in_flight
    measure(
        tracked=final.tracked,
        queue_full=final.dropped["queue_full"],
        shutdown=final.dropped["shutdown"],
        growth_bytes=growth,
        bound_bytes=bound,
        queue_bytes=end - baseline,
        message_bytes=message_size,
        loop_seconds=round(loop_seconds, 2),
    )


def test_full_queue_costs_about_the_size_of_its_messages(refused_url, measure):
    """A full queue of 5,000 messages holds at most twice their encoded size in memory."""
    client = outage_client(refused_url)
    payload = "x" * 200
    try:
        _, sample = client.track("user-1", "Outage", {"n": 0, "payload": payload})
        message_size = len(orjson.dumps(sample)) + OVERHEAD
        gc.collect()
        tracemalloc.start()
        for n in range(1, QUEUE + BATCH):
            client.track("user-1", "Outage", {"n": n, "payload": payload})
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        client.shutdown(timeout=0.5)
    stats = client.stats()
    # Normally the worker holds the first batch (in flight) and the queue the rest; if it
    # has not taken a batch yet when the queue fills, the last calls are refused instead.
    assert stats.tracked == sum(stats.dropped.values()) == QUEUE + BATCH
    held_messages = QUEUE + BATCH - stats.dropped.get("queue_full", 0)
    assert held_messages >= QUEUE
    per_message = held / held_messages
    measure(bytes_per_queued_message=round(per_message), message_bytes=message_size)
    assert per_message < 2 * message_size, (
        f"each queued message holds {per_message:.0f} bytes for {message_size} bytes of JSON"
    )
