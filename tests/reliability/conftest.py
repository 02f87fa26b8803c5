"""Shared tools of the reliability suite: event ledgers, error logs, outcome checks."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Set, Tuple

import pytest

import tracklane
from helpers import RecordingServer

SEED = 20240611
"""The one seed of every random fault schedule in this suite (change it to explore)."""


class ErrorLog:
    """A thread-safe ``on_error``: remembers each drop's exception type and messageIds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: List[Tuple[BaseException, List[str]]] = []

    def __call__(self, exc: BaseException, batch: List[Dict[str, Any]]) -> None:
        ids = [m["messageId"] for m in batch]
        with self._lock:
            self.calls.append((exc, ids))

    def ids(self) -> List[str]:
        """Every messageId given to ``on_error``, in order, repeats kept."""
        with self._lock:
            return [i for _, ids in self.calls for i in ids]

    def kinds(self) -> Counter[str]:
        """How many messages each exception type accounted for."""
        with self._lock:
            counts: Counter[str] = Counter()
            for exc, ids in self.calls:
                counts[type(exc).__name__] += len(ids)
            return counts


def track_from_threads(
    client: tracklane.Client,
    count: int,
    threads: int = 1,
    prefix: str = "ev",
    pace: float = 0.0,
) -> Dict[str, str]:
    """Track ``count`` events split over ``threads``; returns messageId -> event id.

    ``pace`` spaces one thread's calls by that many seconds: the shape of the traffic
    (spread over time), never a way to wait for something.
    """
    ledger: Dict[str, str] = {}
    lock = threading.Lock()
    refused: List[str] = []
    never = threading.Event()

    def produce(worker: int) -> None:
        mine: Dict[str, str] = {}
        for i in range(worker, count, threads):
            event_id = f"{prefix}-{i}"
            queued, message = client.track(f"user-{i % 7}", "Fault Test", {"id": event_id})
            if not queued:
                refused.append(event_id)
            mine[message["messageId"]] = event_id
            if pace:
                never.wait(pace)
        with lock:
            ledger.update(mine)

    workers = [threading.Thread(target=produce, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(w.is_alive() for w in workers), "a producer thread is stuck in track()"
    assert len(ledger) == count, "every call returns a message with its own messageId"
    assert not refused, f"{len(refused)} calls were refused (queue full?)"
    return ledger


def wait_until_quiet(server: RecordingServer, timeout: float = 10.0) -> None:
    """Wait until the server has no request in progress (late answers finished)."""
    _poll(lambda: server.in_flight == 0, timeout, lambda: f"{server.in_flight} in progress")


def wait_for_in_flight(server: RecordingServer, count: int, timeout: float = 10.0) -> None:
    """Wait until at least ``count`` requests are in progress on the server."""
    _poll(lambda: server.in_flight >= count, timeout, lambda: f"{server.in_flight} in progress")


def _poll(condition: Any, timeout: float, describe: Any) -> None:
    """Check ``condition`` every 10 ms until it holds; fail at the deadline.

    The recording server does not signal every change of ``in_flight``, so this polls.
    """
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"gave up after {timeout}s: {describe()}"
        tick.wait(0.01)


def identity_holds(stats: tracklane.Stats) -> bool:
    """``tracked == delivered + pending + sum(dropped)``."""
    return stats.tracked == stats.delivered + stats.pending + sum(stats.dropped.values())


def check_outcome(
    ledger: Dict[str, str],
    server: RecordingServer,
    errors: ErrorLog,
    stats: tracklane.Stats,
    exactly_once: bool = True,
) -> Dict[str, int]:
    """The accounting every scenario must satisfy; returns the numbers for the report.

    - the server never saw a messageId that was not tracked, and every copy of a
      messageId carries the same event (a retry never invents or changes a message);
    - each tracked event was either accepted by the server or given to ``on_error``,
      never both and never neither; ``on_error`` heard of each drop once;
    - the counters agree: delivered == distinct accepted, dropped == on_error'd,
      nothing pending, ``tracked == delivered + dropped``;
    - ``exactly_once``: no messageId arrived twice (no request was answered late).
    """
    messages = server.accepted()  # one copy per 2xx request
    copies = Counter(m["messageId"] for m in messages)
    unknown = set(copies) - set(ledger)
    assert not unknown, f"server accepted {len(unknown)} messageIds nobody tracked"
    for message in messages:
        assert message["properties"]["id"] == ledger[message["messageId"]]
    arrived: Set[str] = set(copies)
    dropped_ids = errors.ids()
    assert len(dropped_ids) == len(set(dropped_ids)), "on_error heard of a message twice"
    assert not arrived & set(dropped_ids), "a message both arrived and was reported dropped"
    missing = set(ledger) - arrived
    assert missing == set(dropped_ids), (
        f"{len(missing - set(dropped_ids))} events lost without on_error, "
        f"{len(set(dropped_ids) - missing)} reported dropped but arrived"
    )
    assert stats.tracked == len(ledger)
    assert stats.pending == 0
    assert stats.delivered == len(arrived)
    assert sum(stats.dropped.values()) == len(dropped_ids)
    assert identity_holds(stats)
    duplicates = sum(copies.values()) - len(copies)
    if exactly_once:
        # A retry after a timeout resends a batch the server may have accepted late: say
        # whether that happened, to tell a slow machine from a batch sent twice.
        assert duplicates == 0, (
            f"{duplicates} duplicate deliveries in a scenario without late answers "
            f"({stats.retries} retries; {len(server.requests)} requests)"
        )
    return {
        "tracked": stats.tracked,
        "delivered": stats.delivered,
        "dropped": sum(stats.dropped.values()),
        "retries": stats.retries,
        "duplicates": duplicates,
    }


Measure = Callable[..., None]

_RESULTS: Dict[str, Dict[str, Any]] = {}


@pytest.fixture
def measure(request: pytest.FixtureRequest) -> Measure:
    """``measure(key=value, ...)``: remember a scenario's numbers for docs/reliability.md.

    With ``TRACKLANE_RELIABILITY_RESULTS=<file>`` set, the session writes them there as JSON
    (test id -> numbers); otherwise they are only kept in memory.
    """
    numbers = _RESULTS.setdefault(request.node.nodeid, {})

    def remember(**values: Any) -> None:
        numbers.update(values)

    return remember


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("TRACKLANE_RELIABILITY_RESULTS")
    if path and _RESULTS:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(_RESULTS, out, indent=2, sort_keys=True)


def record(measure: Measure, started: float, numbers: Dict[str, int], **extra: Any) -> None:
    """Remember a scenario's outcome numbers, its duration and any ``extra`` figures."""
    measure(**numbers, seconds=round(time.monotonic() - started, 2), **extra)


class Listener:
    """Turns a RecordingServer's listening socket off (connection refused) and on again."""

    def __init__(self, server: RecordingServer) -> None:
        self.server = server
        self.port = server.httpd.server_address[1]
        self.handler = server.httpd.RequestHandlerClass

    def stop(self) -> None:
        """Close the listening socket: connections to the port are refused from now on.

        Call it before any client has connected: live keep-alive connections survive it.
        """
        self.server.httpd.shutdown()
        self.server.httpd.server_close()

    def start(self) -> None:
        """Listen on the same port again, with the same recording handler."""
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        httpd.daemon_threads = True
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.server.httpd = httpd
        self.server.thread = thread
        thread.start()
