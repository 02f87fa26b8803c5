"""flush_on_signal(): a script killed by SIGTERM delivers everything it tracked."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
from typing import List, Tuple

import pytest

import tracklane
from helpers import RecordingServer

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")

SCRIPT = """
import os
import signal
import threading

import tracklane

tracklane.write_key = "k"
tracklane.host = {host!r}
tracklane.batch_size = 50
tracklane.flush_interval = 60
tracklane.on_error = lambda error, batch: print("ON_ERROR", len(batch), flush=True)
{setup}
pace = threading.Event()
for i in range(100_000):
    tracklane.track("u", "Loop", {{"id": f"ev-{{i}}"}})
    print(f"ev-{{i}}", flush=True)
    # 500 events a second, then 20 a second once 120 are tracked: the test's SIGTERM
    # (sent after it reads 120 ids) lands between full batches, with events queued.
    pace.wait(0.002 if i < 120 else 0.05)
"""


def _run(server: RecordingServer, setup: str, after: int = 120) -> Tuple[int, List[str], str]:
    """Run the loop script, SIGTERM it after ``after`` tracked ids; (status, ids, stderr)."""
    script = SCRIPT.format(host=server.url, setup=textwrap.dedent(setup))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    timer = threading.Timer(30, proc.kill)  # a bound on the whole run, whatever happens
    timer.start()
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(after)]
        proc.send_signal(signal.SIGTERM)
        rest, stderr = proc.communicate(timeout=20)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines.extend(rest.splitlines())
    return proc.returncode, lines, stderr


def test_sigterm_delivers_everything_tracked_and_exits_143(server: RecordingServer) -> None:
    """Opted in, SIGTERM flushes the queue at exit and the status is 128 + SIGTERM."""
    code, lines, stderr = _run(server, "tracklane.flush_on_signal()")
    assert code == 128 + signal.SIGTERM, stderr
    reported = [line for line in lines if line.startswith("ev-")]
    assert not [line for line in lines if line.startswith("ON_ERROR")]
    arrived = [m["properties"]["id"] for m in server.accepted()]
    assert len(arrived) == len(set(arrived)), "nothing arrives twice"
    assert len(arrived) % 50, "the last batch was not a full one: the exit flush sent it"
    # The signal may land between track() and print(): at most one more event arrives.
    assert set(reported) <= set(arrived)
    assert len(arrived) - len(reported) in (0, 1)


def test_sigterm_flushes_before_calling_the_previous_handler(server: RecordingServer) -> None:
    """A handler already set is called after the flush (here it ends with os._exit)."""
    setup = """
    def own_handler(signum, frame):
        print("OWN", signum, flush=True)
        os._exit(7)  # skips atexit: only the flush before it can have sent the queue

    signal.signal(signal.SIGTERM, own_handler)
    tracklane.flush_on_signal()
    tracklane.flush_on_signal()  # idempotent: the previous handler stays own_handler
    """
    code, lines, stderr = _run(server, setup)
    assert code == 7, stderr
    assert f"OWN {int(signal.SIGTERM)}" in lines
    reported = [line for line in lines if line.startswith("ev-")]
    arrived = [m["properties"]["id"] for m in server.accepted()]
    assert set(reported) <= set(arrived)
    assert len(arrived) - len(reported) in (0, 1)


def test_flush_on_signal_needs_the_main_thread() -> None:
    """Called from another thread it raises ConfigurationError (Python's rule for handlers)."""
    errors: List[BaseException] = []

    def call() -> None:
        try:
            tracklane.flush_on_signal()
        except tracklane.ConfigurationError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(10)
    assert len(errors) == 1
    assert "main thread" in str(errors[0])
