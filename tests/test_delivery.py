"""Delivery rules: triggers, limits, one request in flight, retries, splitting, deadlines."""

from __future__ import annotations

import threading
import time
from collections import deque

import pytest

import tracklane
from helpers import Action
from tracklane._core.batching import batch_body, body_size, take_batch
from tracklane.exceptions import (
    APIError,
    MessageTooLargeError,
    QueueFullError,
    RetriesExhaustedError,
    TransportError,
)

pytestmark = pytest.mark.both_clients
SENT_AT = "2026-01-01T00:00:00.000+00:00"


def identity_holds(stats: tracklane.Stats) -> bool:
    return stats.tracked == stats.delivered + stats.pending + sum(stats.dropped.values())


class Errors:
    """Collects on_error calls."""

    def __init__(self) -> None:
        self.calls: list = []
        self.lock = threading.Lock()

    def __call__(self, exc, batch) -> None:
        with self.lock:
            self.calls.append((exc, batch))


def test_batch_size_sets_messages_per_request(server, make_client):
    """250 messages with batch_size=100 go as requests of 100, 100 and 50."""
    client = make_client(batch_size=100, flush_interval=60)
    for i in range(250):
        client.track("u", "E", {"i": i})
    assert client.flush(timeout=10)
    assert [len(r.batch) for r in server.requests] == [100, 100, 50]
    assert [m["properties"]["i"] for m in server.accepted()] == list(range(250))


def test_full_batch_is_sent_without_flush(server, make_client):
    """Reaching batch_size sends at once, without waiting for flush_interval."""
    client = make_client(batch_size=10, flush_interval=60)
    for i in range(10):
        client.track("u", "E", {"i": i})
    assert len(server.wait_for(10, timeout=10)) == 10


def test_flush_interval_sends_a_lone_message(server, make_client):
    """A single message goes out once flush_interval passes, with no flush() call."""
    client = make_client(flush_interval=0.2)
    client.track("u", "E")
    assert len(server.wait_for(1, timeout=10)) == 1


def test_flush_interval_zero_sends_as_soon_as_possible(server, make_client):
    """flush_interval=0 sends each message as soon as the previous request is done."""
    client = make_client(flush_interval=0)
    client.track("u", "E")
    assert len(server.wait_for(1, timeout=10)) == 1


def test_one_request_in_flight(server, make_client):
    """Never more than one request at a time per client; batches fill up meanwhile."""
    server.default = Action(delay=0.02)
    client = make_client(batch_size=50, flush_interval=0)
    for i in range(600):
        client.track("u", "E", {"i": i})
    assert client.flush(timeout=30)
    assert server.max_in_flight == 1
    assert len(server.accepted()) == 600
    assert len(server.requests) < 600


def test_request_cut_at_500kb_by_exact_size(server, make_client):
    """Bodies never exceed 500,000 bytes, and are filled close to it."""
    client = make_client(batch_size=2500, flush_interval=60)
    blob = "x" * 30_000
    for i in range(60):
        assert client.track("u", "Big", {"i": i, "blob": blob})[0]
    assert client.flush(timeout=20)
    sizes = [len(r.body) for r in server.requests]
    assert max(sizes) <= 500_000
    assert max(sizes) > 470_000
    assert len(server.accepted()) == 60


def test_request_cut_at_2500_messages():
    """No request carries more than 2,500 messages, however small they are."""
    queue = deque(b'{"type":"track"}' for _ in range(6000))
    counts = []
    while queue:
        batch = take_batch(queue, 2500)
        assert body_size(batch) == len(batch_body(batch, SENT_AT))
        counts.append(len(batch))
    assert counts == [2500, 2500, 1000]


def test_take_batch_cuts_by_exact_body_size():
    """A batch is the longest prefix whose exact body fits in 500,000 bytes."""
    message = b'{"p":"' + b"x" * 9_990 + b'"}'
    queue = deque([message] * 100)
    batch = take_batch(queue, 2500)
    assert len(batch_body(batch, SENT_AT)) <= 500_000
    assert len(batch_body([*batch, message], SENT_AT)) > 500_000


def test_message_over_32kb_is_refused_and_reported(server, make_client):
    """A message over 32 KB returns (False, msg), calls on_error and counts too_large."""
    errors = Errors()
    client = make_client(on_error=errors)
    ok, msg = client.track("u", "Huge", {"blob": "x" * 33_000})
    assert ok is False
    assert msg["event"] == "Huge"
    ((exc, batch),) = errors.calls
    assert isinstance(exc, MessageTooLargeError)
    assert batch[0]["event"] == "Huge"
    assert client.track("u", "Fits", {"blob": "x" * 32_000})[0]
    assert client.flush(timeout=5)
    assert [m["event"] for m in server.accepted()] == ["Fits"]
    stats = client.stats()
    assert stats.dropped == {"too_large": 1}
    assert stats.tracked == 2
    assert identity_holds(stats)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(server, make_client, status):
    """408, 429 and 5xx are retried and the batch then delivered."""
    server.statuses(status, status)
    client = make_client()
    client.track("u", "E")
    assert client.flush(timeout=10)
    assert [r.status for r in server.requests] == [status, status, 200]
    assert client.stats().retries == 2
    assert client.stats().delivered == 1
    ids = {r.batch[0]["messageId"] for r in server.requests}
    assert len(ids) == 1


def test_dropped_connection_is_retried(server, make_client):
    """A connection reset mid-request is retried with the same messageId."""
    server.respond(Action(reset=True))
    client = make_client()
    client.track("u", "E")
    assert client.flush(timeout=10)
    assert len(server.accepted()) == 1
    assert client.stats().retries >= 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(server, make_client, status):
    """400, 401, 403 and 404 are final: one attempt, on_error, counted as rejected."""
    server.statuses(status)
    errors = Errors()
    client = make_client(on_error=errors)
    client.track("u", "E")
    assert client.flush(timeout=10)
    assert len(server.requests) == 1
    ((exc, batch),) = errors.calls
    assert isinstance(exc, APIError)
    assert exc.status_code == status
    assert batch[0]["event"] == "E"
    assert client.stats().dropped == {"rejected": 1}


def test_retry_after_is_honoured(server, make_client):
    """A 429 with Retry-After: 1 delays the next attempt by about a second."""
    server.statuses(429, **{"Retry-After": "1"})
    client = make_client()
    client.track("u", "E")
    assert client.flush(timeout=10)
    first, second = server.requests
    assert second.at - first.at >= 0.9
    assert second.status == 200


def test_one_bad_message_does_not_sink_the_batch(server, make_client):
    """A 400 on a batch splits it until only the bad message is rejected."""

    def decide(body):
        events = [m["event"] for m in body["batch"]]
        return Action(status=400) if "Bad" in events else Action()

    server.decide = decide
    errors = Errors()
    client = make_client(on_error=errors, flush_interval=60)
    for i in range(9):
        client.track("u", "Good", {"i": i})
        if i == 4:
            client.track("u", "Bad")
    assert client.flush(timeout=10)
    delivered = server.accepted()
    assert sorted(m["properties"]["i"] for m in delivered) == list(range(9))
    ((exc, batch),) = errors.calls
    assert isinstance(exc, APIError)
    assert [m["event"] for m in batch] == ["Bad"]
    stats = client.stats()
    assert stats.delivered == 9
    assert stats.dropped == {"rejected": 1}
    # Every acknowledged request counts, the parts of a split batch each on their own.
    assert stats.batches == sum(1 for r in server.requests if 200 <= r.status < 300)
    assert stats.batches >= 2


def test_retries_exhausted_reports_and_counts(server, make_client):
    """When retries run out the batch is dropped, counted and given to on_error."""
    server.default = Action(status=503)
    errors = Errors()
    client = make_client(on_error=errors, max_retries=2)
    for i in range(3):
        client.track("u", "E", {"i": i})
    assert client.flush(timeout=10)
    assert len(server.requests) == 3
    ((exc, batch),) = errors.calls
    assert isinstance(exc, RetriesExhaustedError)
    assert isinstance(exc.__cause__, APIError)
    assert len(batch) == 3
    stats = client.stats()
    assert stats.dropped == {"retries_exhausted": 3}
    assert stats.retries == 2
    assert identity_holds(stats)


def test_connection_refused_exhausts_retries(make_client):
    """With nothing listening, retries run out and on_error gets a TransportError cause."""
    errors = Errors()
    client = make_client(host="http://127.0.0.1:9", on_error=errors, max_retries=1)
    client.track("u", "E")
    assert client.flush(timeout=10)
    ((exc, _),) = errors.calls
    assert isinstance(exc.__cause__, TransportError)


def test_on_error_that_raises_does_not_kill_the_worker(server, make_client):
    """An exception inside on_error is logged, and delivery goes on."""
    server.statuses(400)

    def on_error(exc, batch):
        raise RuntimeError("user bug")

    client = make_client(on_error=on_error)
    client.track("u", "First")
    assert client.flush(timeout=5)
    client.track("u", "Second")
    assert client.flush(timeout=5)
    assert [m["event"] for m in server.accepted()] == ["Second"]


def test_flush_timeout_against_a_server_that_never_answers(server, make_client):
    """flush(timeout=1) returns within about a second and says what is pending."""
    server.default = Action(hang=True)
    client = make_client(timeout=30)
    client.track("u", "E")
    client.track("u", "E2")
    started = time.monotonic()
    result = client.flush(timeout=1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    assert not result
    assert result.pending == 2
    assert result.stats.pending == 2
    server.release.set()


def test_shutdown_is_bounded_and_counts_what_is_left(server, make_client):
    """shutdown(timeout) against a hanging server returns near the deadline; the rest is counted."""
    server.default = Action(hang=True)
    errors = Errors()
    client = make_client(timeout=30, on_error=errors)
    for i in range(5):
        client.track("u", "E", {"i": i})
    started = time.monotonic()
    client.shutdown(timeout=1)
    assert time.monotonic() - started < 3
    stats = client.stats()
    assert stats.pending == 0
    assert stats.dropped == {"shutdown": 5}
    assert sum(len(batch) for _, batch in errors.calls) == 5
    server.release.set()


def test_full_queue_returns_false_and_counts(server, make_client):
    """With the queue full, calls return False, are counted and reported, never raise."""
    server.default = Action(hang=True)
    errors = Errors()
    client = make_client(max_queue_size=5, batch_size=1, timeout=30, on_error=errors)
    results = [client.track("u", "E", {"i": i})[0] for i in range(20)]
    assert results.count(False) >= 14
    stats = client.stats()
    assert stats.dropped["queue_full"] == results.count(False)
    assert all(isinstance(exc, QueueFullError) for exc, _ in errors.calls)
    assert identity_holds(stats)
    server.release.set()


def test_overflow_drop_oldest_keeps_newest(server, make_client):
    """overflow="drop_oldest" drops the oldest queued message instead of the new one."""
    client = make_client(max_queue_size=3, overflow="drop_oldest", flush_interval=60)
    worker_started = client.track("u", "E", {"i": -1})
    assert worker_started[0]
    # Fill the queue while nothing can be sent yet (batch_size not reached, no flush).
    for i in range(5):
        assert client.track("u", "E", {"i": i})[0]
    assert client.flush(timeout=5)
    assert [m["properties"]["i"] for m in server.accepted()] == [2, 3, 4]
    assert client.stats().dropped == {"queue_full": 3}


@pytest.mark.thread_only(reason="AsyncClient refuses overflow='block' (it would block the loop)")
def test_overflow_block_waits_for_room(server, make_client):
    """overflow="block" makes the caller wait for room instead of dropping."""
    server.default = Action(delay=0.05)
    client = make_client(
        max_queue_size=10, batch_size=10, overflow="block", block_timeout=10, flush_interval=0
    )
    for i in range(200):
        assert client.track("u", "E", {"i": i})[0]
    assert client.flush(timeout=30)
    assert len(server.accepted()) == 200
    assert client.stats().dropped == {}


def test_stats_identity_holds_while_flushing(server, make_client):
    """Sampled continuously during retries and a flush, the counters always add up."""
    server.default = Action(delay=0.005)
    server.statuses(500, 503, 500)
    client = make_client(batch_size=20, flush_interval=0)
    samples: list = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(client.stats())

    sampler = threading.Thread(target=sample)
    sampler.start()
    for i in range(500):
        client.track("u", "E", {"i": i})
    assert client.flush(timeout=30)
    done.set()
    sampler.join()
    assert len(samples) > 10
    assert all(identity_holds(s) for s in samples)
    assert client.stats().delivered == 500
