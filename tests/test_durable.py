"""The durable queue (queue_path): accepted messages survive the process being killed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

import tracklane
from helpers import Action
from tracklane.collector import serve_in_thread
from tracklane.exceptions import ConfigurationError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the durable queue needs POSIX")

PRODUCER = textwrap.dedent(
    """
    import sys
    import tracklane
    host, path, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    client = tracklane.Client("k", host=host, queue_path=path, flush_interval=0.01, timeout=2)
    print("ready", client.stats().recovered, flush=True)
    i = 0
    while True:
        ok, _ = client.track("u", "Burst", {"tag": tag, "i": i})
        if ok:
            print(i, flush=True)
        i += 1
    """
)


def rows(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        db.close()


def run_and_kill(script: str, server_url: str, path: str, tag: str, after: int) -> set:
    """Run the producer, SIGKILL it once it has reported ``after`` accepted calls."""
    proc = subprocess.Popen(
        [sys.executable, script, server_url, path, tag], stdout=subprocess.PIPE, text=True
    )
    accepted = set()
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            continue
        accepted.add((tag, int(line)))
        if len(accepted) >= after or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    return accepted


def drain(server_url: str, path: str) -> tracklane.Stats:
    """Open the queue in a fresh process and flush what is in it."""
    code = f"""
import tracklane
c = tracklane.Client("k", host="{server_url}", queue_path="{path}")
r = c.flush(timeout=20)
s = c.stats()
print(s.recovered, s.delivered, s.pending, int(bool(r)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    recovered, delivered, pending, complete = map(int, out.stdout.split())
    assert complete == 1
    return tracklane.Stats(recovered, delivered, 0, pending, {}, recovered)


def test_kill_9_at_random_moments_loses_nothing(tmp_path):
    """Killed at random moments mid-burst, then restarted: the collector stores every
    accepted event exactly once."""
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    path = str(tmp_path / "events.db")
    rng = random.Random(1234)
    accepted: set = set()
    with serve_in_thread(tmp_path / "collector.db") as collector:
        for round_no in range(4):
            after = rng.randint(50, 1500)
            accepted |= run_and_kill(str(script), collector.url, path, f"r{round_no}", after)
        drain(collector.url, path)
        stored = httpx.get(f"{collector.url}/v1/events", params={"limit": "10000"}).json()
    keys = [(e["properties"]["tag"], e["properties"]["i"]) for e in stored["events"]]
    assert accepted <= set(keys)  # nothing accepted is lost
    assert len(keys) == len(set(keys))  # stored once: retries kept their messageId
    assert rows(path) == 0


def test_dead_holder_is_detected_at_once(server, tmp_path):
    """Messages leased by a killed process are released when the next process opens the queue."""
    server.default = Action(hang=True)
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    path = str(tmp_path / "events.db")
    accepted = run_and_kill(str(script), server.url, path, "leased", 300)
    server.release.set()
    server.default = Action()
    started = time.monotonic()
    stats = drain(server.url, path)
    assert time.monotonic() - started < 15
    assert stats.recovered >= len(accepted)
    received = {m["properties"]["i"] for m in server.accepted()}
    assert {i for _, i in accepted} <= received


def test_two_live_processes_never_send_the_same_message(server, tmp_path):
    """Two processes sharing one queue file each deliver their own messages, once."""
    path = str(tmp_path / "shared.db")
    code = f"""
import sys, tracklane
c = tracklane.Client("k", host="{server.url}", queue_path="{path}", flush_interval=0.01)
for i in range(400):
    c.track("u", "Shared", {{"who": sys.argv[1], "i": i}})
assert c.flush(timeout=30)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, who]) for who in ("a", "b")]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    messages = server.accepted()
    assert len(messages) == 800
    assert len({m["messageId"] for m in messages}) == 800
    assert rows(path) == 0


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.thread_only(reason="the loop runs in a thread here; test_async_client forks a loop")
def test_fork_child_opens_its_own_connection(server, make_client, tmp_path):
    """After fork the child queues in its own rows; parent and child each deliver their own."""
    path = str(tmp_path / "fork.db")
    client = make_client(queue_path=path, flush_interval=60)
    client.track("u", "Parent before")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            client.track("u", "Child")
            code = 0 if client.flush(timeout=10) and client.stats().delivered == 1 else 3
        finally:
            os._exit(code)
    client.track("u", "Parent after")
    assert client.flush(timeout=10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    events = sorted(m["event"] for m in server.wait_for(3, timeout=5))
    assert events == ["Child", "Parent after", "Parent before"]
    assert rows(path) == 0


@pytest.mark.both_clients
def test_shutdown_during_outage_keeps_messages_on_disk(server, make_client, tmp_path):
    """Undelivered at shutdown, durable messages stay queued (not dropped) for the next process."""
    server.default = Action(status=503)
    errors: list = []
    path = str(tmp_path / "outage.db")
    client = make_client(
        queue_path=path, max_retries=100_000, on_error=lambda e, b: errors.append(e)
    )
    for i in range(10):
        client.track("u", "Kept", {"i": i})
    client.shutdown(timeout=0.5)
    stats = client.stats()
    assert stats.dropped == {}
    assert stats.pending == 10
    assert errors == []
    assert rows(path) == 10
    server.default = Action()
    later = make_client(queue_path=path)
    assert later.stats().recovered == 10
    assert later.flush(timeout=10)
    assert sorted(m["properties"]["i"] for m in server.accepted()) == list(range(10))
    assert rows(path) == 0


@pytest.mark.both_clients
def test_delivered_and_rejected_messages_are_removed(server, make_client, tmp_path):
    """Delivered messages, and ones rejected for good, leave the file."""
    server.statuses(400)
    path = str(tmp_path / "clean.db")
    client = make_client(queue_path=path)
    client.track("u", "Rejected")
    assert client.flush(timeout=5)
    client.track("u", "Delivered")
    assert client.flush(timeout=5)
    assert rows(path) == 0
    assert client.stats().dropped == {"rejected": 1}


def test_sigterm_mid_stream_loses_nothing_with_a_durable_queue(server, tmp_path):
    """A script killed by SIGTERM mid-stream leaves its queue on disk; the next run sends it."""
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    path = str(tmp_path / "sigterm.db")
    server.default = Action(delay=0.005)
    proc = subprocess.Popen(
        [sys.executable, str(script), server.url, path, "term"], stdout=subprocess.PIPE, text=True
    )
    accepted = set()
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith("ready"):
            accepted.add(int(line))
        if len(accepted) >= 800:
            break
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    proc.stdout.close()
    drain(server.url, path)
    received = {m["properties"]["i"] for m in server.accepted()}
    assert accepted <= received
    assert rows(path) == 0


@pytest.mark.parametrize("cls", ["Client", "AsyncClient"])
def test_a_queue_path_that_cannot_be_opened_is_a_configuration_error(tmp_path, cls):
    """Both clients refuse a queue_path they cannot open, naming the option, at construction."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigurationError, match="queue_path"):
        getattr(tracklane, cls)("k", host="http://127.0.0.1:9", queue_path=str(blocker / "q.db"))
