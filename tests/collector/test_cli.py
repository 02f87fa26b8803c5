"""``tracklane serve`` and ``python -m tracklane.collector``, as subprocesses and in-process."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import httpx
import pytest

from tracklane._cli import main
from tracklane.collector._options import ENV_WRITE_KEYS, INSTALL_HINT, write_keys_from

from .processes import EXIT_DEADLINE, STARTUP_DEADLINE, Spawn, child_env, tracklane_command


def _batch(count: int) -> Dict[str, object]:
    return {
        "batch": [
            {"type": "track", "userId": "u", "event": "E", "messageId": str(uuid.uuid4())}
            for _ in range(count)
        ]
    }


def test_serve_prints_its_url_and_exits_0_on_sigterm(spawn: Spawn, tmp_path: Path) -> None:
    """``tracklane serve --port 0`` prints its real URL, honours its keys and exits 0 on SIGTERM."""
    db = tmp_path / "events.db"
    args = [*tracklane_command(), "serve", "--port", "0", "--db", str(db), "--write-key", "k1"]
    server = spawn(args, **{ENV_WRITE_KEYS: " k2, k3,"})
    assert server.port > 0
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for key in ("k1", "k3"):
            assert http.post("/v1/batch", json=_batch(1), auth=(key, "")).status_code == 200
        assert http.post("/v1/batch", json=_batch(1), auth=("k4", "")).status_code == 401
    code, took = server.stop(signal.SIGTERM)
    assert code == 0, server.stderr()
    assert took < EXIT_DEADLINE
    assert db.exists()


def test_module_entry_point_uses_defaults_and_exits_0_on_ctrl_c(
    spawn: Spawn, tmp_path: Path
) -> None:
    """``-m tracklane.collector`` uses 127.0.0.1 and ./tracklane-events.db; Ctrl-C exits 0."""
    server = spawn([sys.executable, "-m", "tracklane.collector"])
    assert httpx.post(f"{server.url}/v1/batch", json=_batch(2), timeout=10).status_code == 200
    code, _ = server.stop(signal.SIGINT)
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr()
    with closing(sqlite3.connect(tmp_path / "tracklane-events.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2


def test_acknowledged_events_survive_kill_9(spawn: Spawn, tmp_path: Path) -> None:
    """Every event acknowledged with 200 is in the database after the server is SIGKILLed."""
    db = tmp_path / "events.db"
    server = spawn([*tracklane_command(), "serve", "--port", "0", "--db", str(db)])
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(5):
            assert http.post("/v1/batch", json=_batch(100)).status_code == 200
    server.proc.kill()
    assert server.proc.wait(EXIT_DEADLINE) == -signal.SIGKILL
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 500


KILL_CLIENTS = 4
KILL_BATCH = 50
KILL_AFTER_REQUESTS = 40  # requests acknowledged (all clients) before the collector is killed


@pytest.mark.parametrize("workers", ["0", "2"])
def test_events_acknowledged_by_concurrent_requests_survive_kill_9(
    spawn: Spawn, tmp_path: Path, workers: str
) -> None:
    """Clients post at once (their rows share commits); SIGKILL mid-stream loses no 200.

    With ``--workers 2`` the worker processes store the rows; the server is killed.
    """
    db = tmp_path / "events.db"
    server = spawn(
        [*tracklane_command(), "serve", "--port", "0", "--db", str(db), "--workers", workers]
    )
    acked: Set[str] = set()
    lock = threading.Lock()
    enough = threading.Event()
    outcomes: List[str] = []

    def post_until_killed() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for _ in range(200):  # bounded: the kill comes long before
                ids = [str(uuid.uuid4()) for _ in range(KILL_BATCH)]
                batch = [
                    {"type": "track", "userId": "u", "event": "E", "messageId": i} for i in ids
                ]
                try:
                    response = http.post("/v1/batch", json={"batch": batch})
                except httpx.HTTPError as exc:  # the collector is gone
                    outcomes.append(type(exc).__name__)
                    return
                assert response.status_code == 200, response.text
                with lock:
                    acked.update(ids)
                    if len(acked) >= KILL_AFTER_REQUESTS * KILL_BATCH:
                        enough.set()

    threads = [threading.Thread(target=post_until_killed) for _ in range(KILL_CLIENTS)]
    for thread in threads:
        thread.start()
    assert enough.wait(60), "the collector did not acknowledge enough requests in 60 s"
    server.proc.kill()
    assert server.proc.wait(EXIT_DEADLINE) == -signal.SIGKILL
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == KILL_CLIENTS  # each client saw the kill, mid-stream
    with closing(sqlite3.connect(db)) as conn:
        stored = {row[0] for row in conn.execute("SELECT message_id FROM events")}
    assert acked <= stored


def test_port_in_use_exits_1_with_a_message(tmp_path: Path) -> None:
    """A port already taken ends the command with exit code 1 and says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = subprocess.run(
            [*tracklane_command(), "serve", "--port", port, "--db", str(tmp_path / "e.db")],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=STARTUP_DEADLINE,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_unusable_database_exits_1_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --db in a missing directory ends ``serve`` with exit code 1 and says why."""
    assert main(["serve", "--db", str(tmp_path / "missing" / "events.db")]) == 1
    assert "tracklane collector: cannot open" in capsys.readouterr().err


@pytest.mark.parametrize(
    "entry",
    [
        "from tracklane._cli import main; sys.exit(main(['serve']))",
        "import runpy; runpy.run_module('tracklane.collector', run_name='__main__')",
    ],
)
def test_missing_extra_prints_the_install_command(entry: str) -> None:
    """Without starlette/uvicorn both entry points print the pip command and exit 2."""
    code = f"import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None; {entry}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=STARTUP_DEADLINE,
    )
    assert result.returncode == 2, result.stderr
    assert INSTALL_HINT in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_does_not_import_the_collector_until_serve() -> None:
    """Importing ``tracklane._cli`` loads neither starlette nor uvicorn."""
    code = (
        "import sys, tracklane._cli; "
        "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=30
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_no_command_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``tracklane`` with no command prints usage and returns 2."""
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["--port", "70000"], ["--port", "http"], ["--write-key", " "], ["--verbose"]]
)
def test_bad_flags_exit_2(args: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Invalid flags are refused by argparse with exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *args])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ([], None, ()),
        (["a"], "b, c ,,a", ("a", "b", "c")),
        ([], " x ", ("x",)),
        (["a", "a"], "", ("a",)),
    ],
)
def test_write_keys_combine_flags_and_environment(
    flags: List[str], env: Optional[str], expected: Tuple[str, ...]
) -> None:
    """--write-key flags and the comma-separated variable add up, without blanks or repeats."""
    environ = {} if env is None else {ENV_WRITE_KEYS: env}
    assert write_keys_from(flags, environ) == expected
