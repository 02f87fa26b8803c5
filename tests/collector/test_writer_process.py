"""The SQLite writer process of ``tracklane serve`` (``_writer_process``)."""

from __future__ import annotations

import logging
import marshal
import os
import signal
import sqlite3
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import httpx
import pytest

import tracklane.collector._writer_process as writer_process
from tracklane.collector import serve_in_thread
from tracklane.collector._writer_process import _LENGTH, _take_frames

from .processes import (
    EXIT_DEADLINE,
    Running,
    Spawn,
    all_gone,
    children,
    cmdline,
    tracklane_command,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")

STARTED_DEADLINE = 30.0


def _track(message_id: str) -> Dict[str, Any]:
    return {"type": "track", "userId": "u", "event": "E", "messageId": message_id}


def _writer_of(server: Running) -> int:
    """The server's writer process, once it has started (polled until a deadline)."""
    deadline = time.monotonic() + STARTED_DEADLINE
    while time.monotonic() < deadline:
        for child in children(server.proc.pid):
            if b"tracklane-writer" in cmdline(child) and _serving(server, child):
                return child
        time.sleep(0.02)
    raise AssertionError(f"no writer process; stderr: {server.stderr()}")


def _serving(server: Running, pid: int) -> bool:
    """Whether ingest requests now go to the writer process ``pid`` (``GET /health`` says)."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        return bool(http.get("/health").json()["writer_process"] == pid)


def _written_bytes(pid: int) -> int:
    """Bytes the process passed to write calls (``/proc/<pid>/io``'s ``wchar``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/<pid>/io")


def _count(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def _serve(spawn: Spawn, db: Path) -> Running:
    return spawn([*tracklane_command(), "serve", "--port", "0", "--db", str(db)])


def test_requests_are_committed_by_the_writer_process(spawn: Spawn, tmp_path: Path) -> None:
    """Concurrent batches, some sent twice, are stored once each with exact per-request counts;
    the rows are written by the writer process, and SIGTERM stops it with the server."""
    db = tmp_path / "events.db"
    server = _serve(spawn, db)
    writer = _writer_of(server)
    written_before = _written_bytes(writer)
    answers: List[Dict[str, Any]] = []
    failures: List[str] = []
    lock = threading.Lock()

    def send(client: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for number in range(10):
                batch = [_track(f"{client}-{number}-{i}") for i in range(50)]
                for _ in range(2 if number % 3 == 0 else 1):  # every third batch sent twice
                    response = http.post("/v1/batch", json={"batch": batch})
                    with lock:
                        if response.status_code == 200:
                            answers.append(response.json())
                        else:
                            failures.append(response.text)

    threads = [threading.Thread(target=send, args=(client,)) for client in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(answers) == 6 * (10 + 4)
    assert sum(answer["stored"] for answer in answers) == 6 * 10 * 50
    assert sum(answer["duplicates"] for answer in answers) == 6 * 4 * 50
    assert all(answer["stored"] + answer["duplicates"] == 50 for answer in answers)
    # The writer process wrote the rows (each about 150 bytes stored), not the server.
    assert _written_bytes(writer) - written_before > 6 * 10 * 50 * 150
    code, _ = server.stop(signal.SIGTERM)
    assert code == 0
    assert all_gone([writer], time.monotonic() + EXIT_DEADLINE)
    assert _count(db) == 6 * 10 * 50


def test_a_killed_writer_loses_nothing_and_is_replaced(spawn: Spawn, tmp_path: Path) -> None:
    """After a SIGKILL of the writer process at most one request gets a 503, the server
    commits in its own process and says so in its log, a new writer takes over, and every
    acknowledged event is stored."""
    db = tmp_path / "events.db"
    server = _serve(spawn, db)
    writer = _writer_of(server)
    acknowledged = set()
    statuses: List[int] = []
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/v1/batch", json={"batch": [_track("first")]}).json()["stored"] == 1
        acknowledged.add("first")
        os.kill(writer, signal.SIGKILL)
        deadline = time.monotonic() + 30
        for number in range(20):
            message_id = f"after-{number}"
            while message_id not in acknowledged and time.monotonic() < deadline:
                response = http.post("/v1/batch", json={"batch": [_track(message_id)]})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    acknowledged.add(message_id)
        assert len(acknowledged) == 21, statuses
        assert set(statuses) <= {200, 503}
        assert statuses.count(503) <= 1  # only a request that found the writer gone
        assert http.get("/v1/events/count").json()["count"] == 21
    assert "writer process" in server.stderr()
    replacement = _writer_of(server)
    assert replacement != writer
    deadline = time.monotonic() + EXIT_DEADLINE
    while Path(f"/proc/{writer}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{writer}").exists()  # reaped by the server, not left a zombie
    with httpx.Client(base_url=server.url, timeout=10) as http:
        written_before = _written_bytes(replacement)
        batch = [_track(f"later-{number}") for number in range(100)]
        assert http.post("/v1/batch", json={"batch": batch}).json()["stored"] == 100
        assert _written_bytes(replacement) - written_before > 100 * 150
    code, _ = server.stop(signal.SIGTERM)
    assert code == 0
    assert all_gone([replacement], time.monotonic() + EXIT_DEADLINE)
    assert _count(db) == 121


def test_the_writer_exits_when_the_server_is_killed(spawn: Spawn, tmp_path: Path) -> None:
    """After a kill -9 of the server its writer process exits by itself, and what was
    acknowledged before is in the file."""
    db = tmp_path / "events.db"
    server = _serve(spawn, db)
    writer = _writer_of(server)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        batch = [_track(str(uuid.uuid4())) for _ in range(100)]
        assert http.post("/v1/batch", json={"batch": batch}).json()["stored"] == 100
    server.proc.kill()
    assert server.proc.wait(EXIT_DEADLINE) == -signal.SIGKILL
    assert all_gone([writer], time.monotonic() + EXIT_DEADLINE)
    assert _count(db) == 100


def test_a_store_that_refuses_the_rows_gets_a_503_naming_why(spawn: Spawn, tmp_path: Path) -> None:
    """When the writer cannot insert (here: the table was dropped behind the collector's
    back), the request gets a 503 saying why, and nothing is acknowledged."""
    db = tmp_path / "events.db"
    server = _serve(spawn, db)
    _writer_of(server)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TABLE events")
        conn.commit()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        response = http.post("/v1/batch", json={"batch": [_track("m")]})
    assert response.status_code == 503
    assert response.json() == {
        "success": False,
        "error": "storage unavailable: no such table: events",
    }


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_frames_split_anywhere_come_out_whole_and_in_order(chunk: int) -> None:
    """However the socket splits the frames, each is read once, whole, in order, and a
    partial frame waits in the buffer for its end."""
    sent: List[Optional[Any]] = [
        (number, [("k", f"m{number}", "x" * number)]) for number in range(40)
    ]
    stream = b"".join(_LENGTH.pack(len(payload)) + payload for payload in map(marshal.dumps, sent))
    buffer = bytearray()
    received: List[Any] = []
    for start in range(0, len(stream), chunk):
        buffer += stream[start : start + chunk]
        received += _take_frames(buffer)
    assert received == sent
    assert buffer == bytearray()
    partial = _LENGTH.pack(10) + b"12345"
    buffer = bytearray(partial)
    assert _take_frames(buffer) == []
    assert bytes(buffer) == partial


def test_without_a_writer_process_the_server_commits_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the writer process cannot start, the collector says so in its log, commits in its
    own process, and every batch is stored and acknowledged as usual."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError("no processes here")

    def writers() -> Set[int]:  # other tests' servers may still run in this process
        return {pid for pid in children(os.getpid()) if b"tracklane-writer" in cmdline(pid)}

    before = writers()
    monkeypatch.setattr(writer_process, "start_child", refuse)
    caplog.set_level(logging.WARNING, logger="tracklane.collector")
    with serve_in_thread(tmp_path / "events.db") as server:
        deadline = time.monotonic() + STARTED_DEADLINE
        while "did not start" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "the store's writer process did not start (no processes here)" in caplog.text
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/health").json() == {"ok": True, "writer_process": None}
            batch = [_track(f"m-{number}") for number in range(50)]
            assert http.post("/v1/batch", json={"batch": batch}).json()["stored"] == 50
            assert http.post("/v1/batch", json={"batch": batch}).json()["duplicates"] == 50
    assert _count(tmp_path / "events.db") == 50
    assert writers() <= before  # no writer process was started
