"""Fault injection against a real HTTP server on 127.0.0.1: every event arrives or is counted.

Each scenario tracks a known set of events (distinct ids in ``properties.id``), lets the
server misbehave on a seeded schedule, flushes with a deadline and then checks, from what
the server accepted, that every event arrived, or that exactly the events given to
``on_error`` (and counted in ``stats().dropped``) are missing. See ``check_outcome``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict

import pytest

from helpers import Action, RecordingServer

from .conftest import (
    SEED,
    ErrorLog,
    Listener,
    check_outcome,
    identity_holds,
    record,
    track_from_threads,
    wait_for_in_flight,
    wait_until_quiet,
)

pytestmark = [pytest.mark.slow, pytest.mark.both_clients]


@dataclass
class Run:
    """One scenario's run: its client, what ``on_error`` heard and the checked outcome."""

    started: float
    client: Any
    errors: ErrorLog
    stats: Any
    numbers: Dict[str, int]


def run_scenario(
    make_client: Callable[..., Any],
    server: RecordingServer,
    count: int,
    threads: int = 1,
    pace: float = 0.0,
    exactly_once: bool = True,
    flush_timeout: float = 30,
    **options: Any,
) -> Run:
    """Track ``count`` events from ``threads`` through a client with ``options`` (and
    ``flush_interval=0.05``), flush within ``flush_timeout``, and check the accounting
    (``check_outcome``). Without ``exactly_once`` (late answers), it first waits until the
    server has answered everything it is still working on."""
    errors = ErrorLog()
    options.setdefault("flush_interval", 0.05)
    client = make_client(on_error=errors, **options)
    started = time.monotonic()
    ledger = track_from_threads(client, count, threads=threads, pace=pace)
    assert client.flush(timeout=flush_timeout)
    if not exactly_once:
        wait_until_quiet(server)
    stats = client.stats()
    numbers = check_outcome(ledger, server, errors, stats, exactly_once=exactly_once)
    return Run(started, client, errors, stats, numbers)


def test_random_5xx_every_event_arrives_once(server, make_client, measure):
    """With 30% of requests answered 500/502/503 (seeded), every event arrives exactly once."""
    rng = random.Random(SEED)
    failures = Counter()

    def decide(_body):
        if rng.random() < 0.3:
            status = rng.choice((500, 502, 503))
            failures[status] += 1
            return Action(status=status)
        return Action()

    server.decide = decide
    run = run_scenario(make_client, server, 1200, threads=4, batch_size=10)
    assert run.numbers["delivered"] == 1200
    assert sum(failures.values()) > 0, "the schedule injected no failure"
    assert run.stats.retries == sum(failures.values()), "each 5xx answer is followed by one retry"
    record(measure, run.started, run.numbers, faults=sum(failures.values()))


def test_connection_resets_every_event_arrives_once(server, make_client, measure):
    """With 30% of connections reset before any answer (seeded), every event arrives once."""
    rng = random.Random(SEED + 1)

    def decide(_body):
        return Action(reset=rng.random() < 0.3)

    server.decide = decide
    run = run_scenario(make_client, server, 1200, threads=4, batch_size=10)
    assert run.numbers["delivered"] == 1200
    resets = sum(1 for r in server.requests if r.status == 0)
    assert resets > 0, "the schedule injected no reset"
    assert run.stats.retries == resets, "each reset is followed by one retry"
    record(measure, run.started, run.numbers, faults=resets)


def test_responses_that_never_come_time_out_and_retry(server, make_client, measure):
    """Requests that never get an answer time out (timeout=0.5 s) and are retried; none lost."""
    hung = []
    seen = Counter()

    def decide(_body):
        seen["requests"] += 1
        hang = len(hung) < 4 and seen["requests"] % 3 == 1
        if hang:
            hung.append(seen["requests"])
        return Action(hang=hang)

    server.decide = decide
    run = run_scenario(make_client, server, 800, threads=2, batch_size=100, timeout=0.5)
    assert run.numbers["delivered"] == 800
    assert len(hung) == 4
    assert run.stats.retries == len(hung), "each timed-out request is retried once"
    record(measure, run.started, run.numbers, faults=len(hung))


@pytest.mark.parametrize("kind", ["http_503", "connection_refused"])
def test_outage_of_three_seconds_then_recovery(server, make_client, measure, kind):
    """A 3 s outage (503s, or nothing listening) is ridden out by retries; every event arrives."""
    outage = 3.0
    started = time.monotonic()
    timer = None
    refused = Counter()
    if kind == "http_503":

        def decide(_body):
            if time.monotonic() - started < outage:
                refused["503"] += 1
                return Action(status=503)
            return Action()

        server.decide = decide
    else:
        listener = Listener(server)
        listener.stop()
        timer = threading.Timer(outage, listener.start)
        timer.start()
    try:
        # A retry budget wider than the outage: up to 100 retries of at most 0.25 s each.
        run = run_scenario(
            make_client,
            server,
            1500,
            threads=3,
            batch_size=100,
            max_retries=100,
            backoff_base=0.05,
            backoff_cap=0.25,
        )
    finally:
        if timer is not None:
            timer.cancel()
    elapsed = time.monotonic() - started
    assert run.numbers["delivered"] == 1500
    assert elapsed >= outage, "flush cannot complete before the outage ends"
    assert run.stats.retries > 0
    if kind == "http_503":
        assert run.stats.retries == refused["503"]
    record(measure, started, run.numbers, outage_seconds=outage)


def test_outage_beyond_retry_budget_loses_only_reported_events(server, make_client, measure):
    """With max_retries=1 through a 1 s outage, the missing events are exactly those reported."""
    outage = 1.0
    started = time.monotonic()

    def decide(_body):
        if time.monotonic() - started < outage:
            return Action(status=503)
        return Action()

    server.decide = decide
    # Three producers spread 900 events over at least 1.5 s, so traffic outlives the outage.
    run = run_scenario(
        make_client, server, 900, threads=3, pace=0.005, batch_size=50, max_retries=1
    )
    numbers = run.numbers
    assert numbers["delivered"] > 0, "events tracked after the outage must arrive"
    assert numbers["dropped"] > 0, "events tracked early in the outage must exhaust retries"
    assert run.stats.dropped == {"retries_exhausted": numbers["dropped"]}
    assert set(run.errors.kinds()) == {"RetriesExhaustedError"}
    record(measure, started, numbers, outage_seconds=outage)


def test_429_storm_honours_retry_after(server, make_client, measure):
    """During a 2.5 s storm of 429 with Retry-After: 1 the client waits 1 s each time; no loss."""
    storm = 2.5
    started = time.monotonic()

    def decide(_body):
        if time.monotonic() - started < storm:
            return Action(status=429, headers={"Retry-After": "1"})
        return Action()

    server.decide = decide
    run = run_scenario(make_client, server, 600, threads=2, batch_size=100)
    numbers = run.numbers
    assert numbers["delivered"] == 600
    requests = list(server.requests)
    limited = [i for i, r in enumerate(requests) if r.status == 429]
    assert len(limited) >= 2, "the storm should answer several requests with 429"
    assert run.stats.retries == len(limited)
    gaps = [requests[i + 1].at - requests[i].at for i in limited if i + 1 < len(requests)]
    # Without Retry-After the fast test backoff would retry within 0.05 s.
    assert min(gaps) >= 0.95, f"a retry came {min(gaps):.3f}s after a 429 with Retry-After: 1"
    record(measure, started, numbers, faults=len(limited), min_gap=round(min(gaps), 3))


def test_retry_after_above_the_cap_waits_only_max_retry_after(server, make_client):
    """Retry-After: 3600 is capped by max_retry_after (0.3 s); the event still arrives."""
    server.respond(Action(status=503, headers={"Retry-After": "3600"}))
    run = run_scenario(make_client, server, 10, flush_timeout=10, max_retry_after=0.3)
    assert time.monotonic() - run.started < 5
    first, second = server.requests[0], server.requests[1]
    assert 0.25 <= second.at - first.at < 3


def test_slow_responses_within_timeout_arrive_once(server, make_client, measure):
    """Answers delayed 0.05-0.3 s (seeded) under a 2 s timeout: one request at a time, no loss."""
    rng = random.Random(SEED + 2)
    server.decide = lambda _body: Action(delay=rng.uniform(0.05, 0.3))
    run = run_scenario(make_client, server, 1000, threads=4, batch_size=100, timeout=2.0)
    assert run.numbers["delivered"] == 1000
    assert run.stats.retries == 0
    assert server.max_in_flight == 1, "at most one request in flight per client"
    record(measure, run.started, run.numbers, requests=len(server.requests))


def test_late_answers_duplicate_only_the_same_message_ids(server, make_client, measure):
    """Answers slower than the timeout (0.8 s vs 0.5 s) cause retries of the same messageIds."""
    server.respond(*(Action(delay=0.8) for _ in range(3)))
    # The server records the late requests as accepted: at-least-once delivery.
    run = run_scenario(
        make_client, server, 300, threads=2, exactly_once=False, batch_size=100, timeout=0.5
    )
    numbers = run.numbers
    assert numbers["delivered"] == 300
    assert run.stats.retries == 3
    in_arrival_order = sorted(server.requests, key=lambda r: r.at)
    first = [m["messageId"] for m in in_arrival_order[0].batch]
    for request in in_arrival_order[1:4]:
        assert [m["messageId"] for m in request.batch] == first, "a retry resends the same batch"
        assert request.body == in_arrival_order[0].body, "byte for byte the same request body"
    assert numbers["duplicates"] == 3 * len(first)
    record(measure, run.started, numbers, faults=3)


def test_shutdown_during_hung_request_reports_the_in_flight_batch(server, make_client):
    """A batch whose request still hangs at shutdown's deadline is counted and given to on_error."""
    server.default = Action(hang=True)
    errors = ErrorLog()
    client = make_client(timeout=30, flush_interval=0.05, on_error=errors)
    first = track_from_threads(client, 20, prefix="in-flight")
    wait_for_in_flight(server, 1)
    queued = track_from_threads(client, 10, prefix="queued")
    result = client.shutdown(timeout=0.5)
    stats = result.stats
    assert identity_holds(client.stats())
    assert sorted(errors.ids()) == sorted([*first, *queued]), (
        f"on_error heard of {len(errors.ids())} of 30 undelivered messages; "
        f"{stats.pending} were left pending with no report"
    )
    assert stats.pending == 0
    assert stats.dropped == {"shutdown": 30}
