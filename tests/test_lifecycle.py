"""Process lifecycle: exit, fork, stub, sync mode, shutdown, several clients, logging."""

from __future__ import annotations

import logging
import os
import time

import pytest

import tracklane
from helpers import Action, run_script
from tracklane.exceptions import RetriesExhaustedError, ShutdownError

pytestmark = pytest.mark.both_clients


def test_script_that_never_flushes_still_delivers_at_exit(server):
    """A script that tracks and simply ends delivers its events at interpreter exit."""
    result = run_script(
        f"""
        import tracklane
        client = tracklane.Client("k", host="{server.url}", flush_interval=60)
        for i in range(3):
            client.track("u", "Exit", {{"i": i}})
        tracklane.write_key = "k"
        tracklane.host = "{server.url}"
        tracklane.upload_interval = 60
        tracklane.track("u", "Module level")
        """
    )
    assert result.returncode == 0, result.stderr
    events = sorted(m["event"] for m in server.wait_for(4, timeout=5))
    assert events == ["Exit", "Exit", "Exit", "Module level"]


def test_exit_flush_is_bounded_by_shutdown_timeout(server):
    """Against a server that never answers, exit waits about shutdown_timeout, not forever."""
    server.default = Action(hang=True)
    started = time.monotonic()
    result = run_script(
        f"""
        import tracklane
        client = tracklane.Client("k", host="{server.url}", shutdown_timeout=1, timeout=30)
        client.track("u", "Stuck")
        """
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert "dropped 1 message(s), reason shutdown" in result.stderr
    server.release.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.thread_only(reason="the loop runs in a thread here; test_async_client forks a loop")
def test_fork_child_and_parent_each_deliver_their_own(server, make_client):
    """After fork the child delivers its own events, the parent its own; none twice."""
    client = make_client(flush_interval=60)
    client.track("u", "Before fork")
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            client.track("u", "In child")
            result = client.flush(timeout=10)
            stats = client.stats()
            code = 0 if result and stats.delivered == 1 and stats.tracked == 1 else 3
        finally:
            os._exit(code)
    client.track("u", "In parent")
    assert client.flush(timeout=10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    events = sorted(m["event"] for m in server.wait_for(3, timeout=5))
    assert events == ["Before fork", "In child", "In parent"]
    assert client.stats().delivered == 2


def test_stub_sends_nothing(server, make_client):
    """stub=True (and send=False) validate and return True but send nothing."""
    for options in ({"stub": True}, {"send": False}):
        client = make_client(**options)
        assert client.track("u", "E")[0] is True
        with pytest.raises(tracklane.ValidationError):
            client.track(None, "E")
        assert client.flush(timeout=1)
        assert client.stats().tracked == 1
    assert server.requests == []


@pytest.mark.thread_only(reason="AsyncClient refuses sync_mode; see client.deliver")
def test_sync_mode_delivers_inline(server, make_client):
    """sync_mode=True delivers before the call returns."""
    client = make_client(sync_mode=True)
    ok, _ = client.track("u", "Inline")
    assert ok is True
    assert [m["event"] for m in server.accepted()] == ["Inline"]
    assert client.stats().delivered == 1


@pytest.mark.thread_only(reason="AsyncClient refuses sync_mode; see client.deliver")
def test_sync_mode_failure_is_reported_not_raised(server, make_client):
    """In sync_mode a failing endpoint gives False and on_error, never an exception."""
    server.default = Action(status=500)
    errors: list = []
    client = make_client(sync_mode=True, max_retries=2, on_error=lambda e, b: errors.append(e))
    ok, _ = client.track("u", "E")
    assert ok is False
    assert isinstance(errors[0], RetriesExhaustedError)
    assert client.stats().dropped == {"retries_exhausted": 1}


def test_several_clients_side_by_side(server, make_client):
    """Two clients with different keys and settings deliver independently."""
    first = make_client(write_key="key-one", batch_size=5)
    second = make_client(write_key="key-two", gzip=True)
    for i in range(12):
        first.track("u", "One", {"i": i})
        second.track("u", "Two", {"i": i})
    assert first.flush(timeout=10)
    assert second.flush(timeout=10)
    by_auth: dict = {}
    for request in server.requests:
        by_auth.setdefault(request.headers["authorization"], []).extend(
            m["event"] for m in request.batch
        )
    assert sorted(len(v) for v in by_auth.values()) == [12, 12]
    assert all(len(set(v)) == 1 for v in by_auth.values())


def test_shutdown_is_idempotent_and_later_calls_are_counted(server, make_client):
    """shutdown twice is harmless; a call after shutdown returns False and is counted."""
    errors: list = []
    client = make_client(on_error=lambda e, b: errors.append(e))
    client.track("u", "E")
    assert client.shutdown(timeout=5)
    assert client.shutdown(timeout=5)
    assert client.track("u", "Late")[0] is False
    stats = client.stats()
    assert stats.delivered == 1
    assert stats.dropped == {"shutdown": 1}
    assert isinstance(errors[0], ShutdownError)


def test_context_manager_shuts_down(server):
    """Leaving a `with Client(...)` block delivers what was tracked."""
    with tracklane.Client("k", host=server.url, flush_interval=60) as client:
        client.track("u", "E")
    assert len(server.accepted()) == 1


def test_write_key_never_logged(server, make_client, caplog):
    """Even at DEBUG and with failures, no log record contains the write key."""
    caplog.set_level(logging.DEBUG, logger="tracklane")
    server.statuses(500, 401)
    client = make_client(write_key="very-secret-write-key", debug=True)
    client.track("u", "E")
    client.flush(timeout=5)
    client.shutdown(timeout=1)
    assert caplog.records
    for record in caplog.records:
        assert "very-secret-write-key" not in record.getMessage()
    logging.getLogger("tracklane").setLevel(logging.NOTSET)


def test_module_level_default_client(server, monkeypatch):
    """The module-level API builds its client lazily from the module settings."""
    monkeypatch.setattr(tracklane, "default_client", None)
    monkeypatch.setattr(tracklane, "write_key", "mod-key")
    monkeypatch.setattr(tracklane, "host", server.url)
    try:
        assert tracklane.track("u", "Module")[0]
        assert tracklane.flush(timeout=5)
        assert tracklane.stats().delivered == 1
    finally:
        tracklane.shutdown(timeout=2)
    assert [m["event"] for m in server.accepted()] == ["Module"]
    assert tracklane.default_client.write_key == "mod-key"  # still there, as in segment


@pytest.mark.thread_only(reason="AsyncClient.flush is awaited; test_async_client covers on_error")
def test_flush_and_track_from_on_error_do_not_deadlock(server, make_client):
    """on_error may call track() and flush() on its own client without hanging the worker."""
    server.statuses(400)
    seen: list = []

    def on_error(exc, batch):
        seen.append(client.flush(timeout=5))
        client.track("u", "Reported", {"bad": batch[0]["event"]})

    client = make_client(on_error=on_error)
    client.track("u", "Bad")
    started = time.monotonic()
    assert client.flush(timeout=10)
    assert client.flush(timeout=10)
    assert time.monotonic() - started < 5
    assert [m["event"] for m in server.accepted()] == ["Reported"]
