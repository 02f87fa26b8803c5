"""``tracklane serve --workers N``: ingest worker processes beside the server process."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Dict

import httpx
import pytest

from tracklane._cli import main

from .processes import (
    EXIT_DEADLINE,
    Spawn,
    alive,
    all_gone,
    children,
    cmdline,
    tracklane_command,
)

API = "/debugger/api"


def _track(message_id: str, **extra: Any) -> Dict[str, Any]:
    return {"type": "track", "userId": "u", "event": "E", "messageId": message_id, **extra}


pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")


def test_workers_store_serve_refuse_and_stop_cleanly(spawn: Spawn, tmp_path: Path) -> None:
    """With --workers 2: batches are stored and read back, a bad message is refused naming its
    field (the rest stored, the refusal in the debugger), a batch sent again is counted as
    duplicates, and SIGTERM stops every process."""
    db = tmp_path / "events.db"
    server = spawn(
        [*tracklane_command(), "serve", "--port", "0", "--db", str(db), "--workers", "2"]
    )
    workers = [pid for pid in children(server.proc.pid) if alive(pid)]
    assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    with httpx.Client(base_url=server.url, auth=("k", ""), timeout=10) as http:
        for start in range(0, 200, 50):  # several requests, so both workers take some
            batch = [_track(i) for i in ids[start : start + 50]]
            answer = http.post("/v1/batch", json={"batch": batch})
            assert answer.status_code == 200, answer.text
            assert answer.json()["stored"] == 50
        bad = http.post(
            "/v1/batch", json={"batch": [_track("good-1"), _track("bad-1", userId=["u"])]}
        ).json()
        assert bad["stored"] == 1
        assert [r["messageId"] for r in bad["rejected"]] == ["bad-1"]
        assert "userId" in bad["rejected"][0]["reason"]
        assert http.post("/v1/track", json=_track("single-1")).json()["stored"] == 1
        again = http.post("/v1/batch", json={"batch": [_track(i) for i in ids[:50]]}).json()
        assert (again["stored"], again["duplicates"]) == (0, 50)
        refused_all = http.post("/v1/batch", json={"batch": [_track("bad-2", userId=["u"])]})
        assert refused_all.status_code == 400
        assert refused_all.json()["error"] == "all 1 messages were rejected"
        count = http.get("/v1/events/count").json()["count"]
        assert count == 202
        events = http.get("/v1/events", params={"limit": 500}).json()["events"]
        assert {e["messageId"] for e in events} == {*ids, "good-1", "single-1"}
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs, reverse=True)
        assert len(set(seqs)) == len(seqs)
        refused = http.get(f"{API}/rejected").json()["rejected"]
        assert any(r.get("messageId") == "bad-1" for r in refused), refused
    code, _ = server.stop(signal.SIGTERM)
    assert code == 0, server.stderr()
    assert all_gone(workers, time.monotonic() + EXIT_DEADLINE)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 202


def test_workers_exit_when_the_server_is_killed(spawn: Spawn, tmp_path: Path) -> None:
    """After a kill -9 of the server its worker processes exit by themselves."""
    server = spawn(
        [
            *tracklane_command(),
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "e.db"),
            "--workers",
            "2",
        ]
    )
    workers = [pid for pid in children(server.proc.pid) if alive(pid)]
    assert len(workers) >= 2
    server.proc.kill()
    assert server.proc.wait(EXIT_DEADLINE) == -signal.SIGKILL
    assert all_gone(workers, time.monotonic() + EXIT_DEADLINE)


def test_a_killed_worker_is_replaced(spawn: Spawn, tmp_path: Path) -> None:
    """A worker killed with SIGKILL is replaced: at most the requests it held get 503, and
    later batches are stored and acknowledged as before."""
    db = tmp_path / "events.db"
    server = spawn(
        [*tracklane_command(), "serve", "--port", "0", "--db", str(db), "--workers", "1"]
    )
    before = [pid for pid in children(server.proc.pid) if alive(pid)]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/v1/batch", json={"batch": [_track("m-0")]}).json()["stored"] == 1
        workers = [
            pid for pid in before if b"tracklane-ingest-worker" in cmdline(pid)
        ]  # the worker, not the store's writer process
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        acknowledged = set()
        statuses = []
        deadline = time.monotonic() + 30
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            message_id = f"m-{len(statuses) + 1}"
            answer = http.post("/v1/batch", json={"batch": [_track(message_id)]})
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                acknowledged.add(message_id)
        assert len(acknowledged) == 20, statuses
        assert set(statuses) <= {200, 503}
        assert statuses.count(503) <= 1  # only the request that found the worker gone
        assert http.get("/v1/events/count").json()["count"] == 21
    after = [pid for pid in children(server.proc.pid) if alive(pid)]
    assert workers[0] not in after
    assert "ingest worker 1" in server.stderr()  # the replacement is logged


@pytest.mark.parametrize("value", ["-1", "65", "two"])
def test_bad_workers_value_names_the_flag(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers outside 0..64 or not a number stops ``serve`` with an error naming the flag."""
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", value])
    assert exited.value.code == 2
    assert "--workers" in capsys.readouterr().err


_UNGUARDED_SCRIPT = """
import base64, json, urllib.request
from tracklane.collector import serve_in_thread

with open({marker!r}, "a") as marker:  # at import: runs again in any child importing __main__
    marker.write("imported\\n")
server = serve_in_thread({db!r}, write_keys=["key-1"], workers=2)
request = urllib.request.Request(
    server.url + "/v1/track",
    data=json.dumps({{"event": "Script Ran", "userId": "u", "messageId": "s1"}}).encode(),
    headers={{"Content-Type": "application/json",
              "Authorization": "Basic " + base64.b64encode(b"key-1:").decode()}})
with urllib.request.urlopen(request, timeout=30) as answer:
    print(answer.status, flush=True)
server.stop()
"""


def test_an_unguarded_user_script_is_not_run_again_by_the_ingest_workers(
    tmp_path: Path,
) -> None:
    """A script calling ``serve_in_thread(..., workers=2)`` with no
    ``if __name__ == "__main__":`` guard runs once (the workers import only tracklane) and
    its events are stored."""
    import subprocess
    import sys

    marker = tmp_path / "imported.txt"
    script = tmp_path / "user_script.py"
    script.write_text(_UNGUARDED_SCRIPT.format(marker=str(marker), db=str(tmp_path / "e.db")))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["200"], done.stderr
    assert marker.read_text() == "imported\n"
