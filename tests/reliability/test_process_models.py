"""Process models: gunicorn --preload, multiprocessing fork pools, a script killed by SIGTERM."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import tracklane
from helpers import free_port, wait_for_port

from .conftest import ErrorLog, record, wait_until_quiet

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns about fork() in a process with threads; forking is the point here.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

WSGI_APP = """
import os

import tracklane

# Created at import time, in the gunicorn master (--preload), before the workers are forked.
client = tracklane.Client("k", host={host!r}, batch_size=20, flush_interval=60)
MASTER = os.getpid()
client.track("master", "Booted", {{"id": "boot", "pid": MASTER}})


def app(environ, start_response):
    event_id = environ["QUERY_STRING"]
    queued, _ = client.track("u", "Request", {{"id": event_id, "pid": os.getpid()}})
    body = f"{{os.getpid()}} {{queued}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_gunicorn_preload_workers_deliver_every_event_once(server, tmp_path, measure):
    """Under gunicorn --preload -w 3, every request's event arrives exactly once at SIGTERM."""
    (tmp_path / "tracked_app.py").write_text(WSGI_APP.format(host=server.url))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",
        "-w",
        "3",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "15",
        "--chdir",
        str(tmp_path),
        "tracked_app:app",
    ]
    log = (tmp_path / "gunicorn.log").open("w+")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=30, alive=proc)
        sent = [f"req-{i}" for i in range(300)]

        # Six concurrent connections, a new one per request (keep-alive off).
        limits = httpx.Limits(max_connections=6, max_keepalive_connections=0)
        with httpx.Client(limits=limits, timeout=10) as http:

            def call(event_id: str) -> str:
                response = http.get(f"http://127.0.0.1:{port}/?{event_id}")
                assert response.status_code == 200
                return response.text

            with ThreadPoolExecutor(max_workers=6) as pool:
                answers = list(pool.map(call, sent))
        worker_pids = {int(text.split()[0]) for text in answers}
        assert all(text.endswith("True") for text in answers), "every track() was queued"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.seek(0)
        output = log.read()
        log.close()
    messages = server.wait_for(len(sent) + 1, timeout=10)
    copies = Counter(m["properties"]["id"] for m in messages)
    assert copies["boot"] == 1, "the master's own event arrives once, never from a worker"
    del copies["boot"]
    assert set(copies) == set(sent), f"missing: {sorted(set(sent) - set(copies))[:5]}\n{output}"
    assert max(copies.values()) == 1, "no event arrives twice"
    assert len({m["messageId"] for m in messages}) == len(messages)
    master = next(m["properties"]["pid"] for m in messages if m["properties"]["id"] == "boot")
    senders = {m["properties"]["pid"] for m in messages if m["properties"]["id"] != "boot"}
    assert master not in senders, "the master serves no request"
    assert senders == worker_pids
    assert len(worker_pids) >= 2, "the burst should reach several workers"
    record(
        measure,
        started,
        {"tracked": len(sent) + 1, "delivered": len(messages), "dropped": 0},
        workers=len(worker_pids),
    )


_POOL_CLIENT: tracklane.Client | None = None


def _track_in_child(event_id: str) -> tuple:
    """Runs in a pool worker: track one event with the client inherited over fork."""
    assert _POOL_CLIENT is not None
    queued, message = _POOL_CLIENT.track("u", "Pool Task", {"id": event_id, "pid": os.getpid()})
    return os.getpid(), queued, message["messageId"]


def test_multiprocessing_fork_pool_delivers_every_event_once(server, make_client, measure):
    """Events tracked in fork-pool workers arrive exactly once when the pool is closed."""
    global _POOL_CLIENT
    errors = ErrorLog()
    client = make_client(flush_interval=60, on_error=errors)
    _, before = client.track("parent", "Before Fork", {"id": "before-fork"})
    _POOL_CLIENT = client
    sent = [f"task-{i}" for i in range(300)]
    started = time.monotonic()
    context = multiprocessing.get_context("fork")
    try:
        pool = context.Pool(3)
        try:
            results = pool.map(_track_in_child, sent, chunksize=10)
        finally:
            pool.close()
            pool.join()
    finally:
        _POOL_CLIENT = None
    assert all(queued for _, queued, _ in results)
    child_pids = {pid for pid, _, _ in results}
    # The children delivered at exit (multiprocessing finalizer); the parent still holds its own.
    messages = server.wait_for(len(sent), timeout=10)
    ids = Counter(m["properties"]["id"] for m in messages)
    assert set(ids) == set(sent), f"missing: {sorted(set(sent) - set(ids))[:5]}"
    assert "before-fork" not in ids, "a child must not send the parent's queued event"
    assert client.flush(timeout=10)
    messages = server.accepted()
    ids = Counter(m["properties"]["id"] for m in messages)
    assert set(ids) == {*sent, "before-fork"}
    assert max(ids.values()) == 1, "no event arrives twice"
    assert {m["messageId"] for m in messages} == {before["messageId"], *(r[2] for r in results)}
    assert {m["properties"]["pid"] for m in messages if m["event"] == "Pool Task"} == child_pids
    stats = client.stats()
    assert (stats.tracked, stats.delivered, stats.pending) == (1, 1, 0), "the parent's own"
    assert not errors.calls
    record(
        measure,
        started,
        {"tracked": len(sent) + 1, "delivered": len(messages), "dropped": 0},
        workers=len(child_pids),
    )


SIGTERM_SCRIPT = """
import sys
import threading

import tracklane

client = tracklane.Client(
    "k", host={host!r}, batch_size=50, flush_interval=60, on_error=lambda e, b: print(
        "ON_ERROR", len(b), flush=True
    )
)
{handler}
pace = threading.Event()
for i in range(100_000):
    client.track("u", "Loop", {{"id": f"ev-{{i}}"}})
    print(f"ev-{{i}}", flush=True)
    # The shape of the traffic: 500 events a second, then 20 a second once 120 are tracked,
    # so that the test's SIGTERM (sent after it reads 120 ids) lands between full batches.
    pace.wait(0.002 if i < 120 else 0.05)
"""


def _run_until_sigterm(server, tmp_path, handler: str, after: int) -> tuple:
    """Start the loop script, read ``after`` tracked ids, SIGTERM it, read the rest."""
    script = SIGTERM_SCRIPT.format(host=server.url, handler=textwrap.dedent(handler))
    errors_file = (tmp_path / "stderr.txt").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=errors_file, text=True
    )
    timer = threading.Timer(30, proc.kill)  # a bound on the whole run, whatever happens
    timer.start()
    lines = []
    try:
        assert proc.stdout is not None
        while len(lines) < after:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        proc.send_signal(signal.SIGTERM)
        lines.extend(line.strip() for line in proc.stdout.read().splitlines())
        proc.wait(timeout=20)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        errors_file.seek(0)
        stderr = errors_file.read()
        errors_file.close()
    wait_until_quiet(server)
    reported = [line for line in lines if line.startswith("ev-")]
    on_error = [line for line in lines if line.startswith("ON_ERROR")]
    return proc.returncode, reported, on_error, stderr


def test_sigterm_mid_stream_in_memory(server, tmp_path, measure):
    """SIGTERM with Python's default handler loses the queued events, silently, by design."""
    # What holds with the in-memory queue: what arrived is exactly the full batches sent
    # before the signal (a prefix of the tracked order, a multiple of batch_size); every
    # event still queued is lost, with no on_error call, no count, no log line, because the
    # default SIGTERM action kills the process without running atexit. The durable queue
    # (queue_path=, tests/test_durable.py) is the fix.
    started = time.monotonic()
    code, reported, on_error, stderr = _run_until_sigterm(server, tmp_path, "", after=120)
    assert code == -signal.SIGTERM, stderr
    messages = server.accepted()
    arrived = [m["properties"]["id"] for m in messages]
    assert len(arrived) == len(set(arrived))
    # Batches of 50 go out as they fill (flush_interval=60 never fires): what arrived is a
    # prefix of the tracked order whose length is a multiple of 50.
    assert len(arrived) % 50 == 0
    assert sorted(arrived, key=lambda e: int(e[3:])) == reported[: len(arrived)]
    lost = reported[len(arrived) :]
    assert len(lost) >= 20, "the events tracked after the last full batch are lost"
    assert not on_error, "nothing runs after the default SIGTERM action: no on_error"
    assert "tracklane" not in stderr, "and nothing is logged"
    record(
        measure,
        started,
        {"tracked": len(reported), "delivered": len(arrived), "dropped": 0},
        lost_silently=len(lost),
    )


def test_sigterm_with_exit_handler_delivers_everything(server, tmp_path, measure):
    """With a SIGTERM handler that calls sys.exit, the exit flush delivers every tracked event."""
    handler = """
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    """
    started = time.monotonic()
    code, reported, on_error, stderr = _run_until_sigterm(server, tmp_path, handler, after=120)
    assert code == 0, stderr
    assert not on_error
    messages = server.accepted()
    arrived = [m["properties"]["id"] for m in messages]
    assert len(arrived) == len(set(arrived))
    # sys.exit may interrupt the loop between track() and print(): at most one more arrives.
    assert set(reported) <= set(arrived)
    assert len(arrived) - len(reported) in (0, 1)
    record(
        measure,
        started,
        {"tracked": len(arrived), "delivered": len(arrived), "dropped": 0},
    )
