"""serve_in_thread: the in-process runner other suites use as a fixture."""

from __future__ import annotations

import gc
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from helpers import free_port
from tracklane.collector import CollectorServer, EventFilter, StorageError, serve_in_thread


def _refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_handle_describes_a_ready_server(tmp_path: Path) -> None:
    """The returned handle is already serving, on a real port, at ``url``."""
    with serve_in_thread(tmp_path / "events.db") as server:
        assert server.running
        assert server.port > 0
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.db_path == tmp_path / "events.db"
        assert server.write_keys == ()
        assert httpx.get(f"{server.url}/health", timeout=10).json()["ok"] is True
        assert "running" in repr(server)


def test_starts_and_stops_fast(tmp_path: Path) -> None:
    """Start and stop take well under a second each (it is a session fixture elsewhere)."""
    started = time.monotonic()
    server = serve_in_thread(tmp_path / "events.db")
    ready = time.monotonic()
    server.stop()
    assert ready - started < 2
    assert time.monotonic() - ready < 2


def test_stop_is_idempotent_and_frees_the_port(tmp_path: Path) -> None:
    """After stop() the port is closed and so is the database; a second stop() does nothing."""
    server = serve_in_thread(tmp_path / "events.db", write_keys=["k", "k", "j"])
    assert server.write_keys == ("k", "j")
    with httpx.Client(base_url=server.url, auth=("k", ""), timeout=10) as http:
        assert http.get("/v1/events/count").json() == {"count": 0}  # a kept-alive connection
        server.stop()
    server.stop()
    assert not server.running
    assert _refuses_connections(server.port)
    with pytest.raises(StorageError):
        server.storage.count(EventFilter())


def test_fixed_port_is_used(tmp_path: Path) -> None:
    """A given port is the one served."""
    port = free_port()
    with serve_in_thread(tmp_path / "events.db", port=port) as server:
        assert server.port == port
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200


def test_port_in_use_raises_oserror(tmp_path: Path, collector: CollectorServer) -> None:
    """Binding a port that is already served raises OSError at once."""
    with pytest.raises(OSError, match="in use"):
        serve_in_thread(tmp_path / "events.db", port=collector.port)


def test_bad_database_raises_and_releases_the_port(tmp_path: Path) -> None:
    """An unusable database raises StorageError and leaves the port free."""
    port = free_port()
    with pytest.raises(StorageError):
        serve_in_thread(tmp_path / "missing" / "events.db", port=port)
    assert _refuses_connections(port)
    with serve_in_thread(tmp_path / "events.db", port=port) as server:
        assert server.port == port


def test_ipv6_loopback(tmp_path: Path) -> None:
    """An IPv6 host is bracketed in the URL."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        server = serve_in_thread(tmp_path / "events.db", host="::1")
    except OSError:
        pytest.skip("::1 is not configured on this machine")
    with server:
        assert server.url == f"http://[::1]:{server.port}"
        assert httpx.get(f"{server.url}/health", timeout=10).json()["ok"] is True


def test_concurrent_clients_are_all_stored(tmp_path: Path) -> None:
    """Several threads posting batches at once all get 200 and everything is stored."""
    errors: list[str] = []

    def post(server: CollectorServer) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for _ in range(5):
                batch = [
                    {"type": "track", "userId": "u", "event": "E", "messageId": str(uuid.uuid4())}
                    for _ in range(50)
                ]
                response = http.post("/v1/batch", json={"batch": batch})
                if response.status_code != 200:
                    errors.append(response.text)

    with serve_in_thread(tmp_path / "events.db") as server:
        threads = [threading.Thread(target=post, args=(server,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert httpx.get(f"{server.url}/v1/events/count", timeout=10).json() == {"count": 1000}


def test_storage_failure_answers_503(tmp_path: Path) -> None:
    """When the database cannot be used, ingest and reads answer 503 (so clients retry)."""
    with serve_in_thread(tmp_path / "events.db") as server:
        server.storage.close()
        batch = {"batch": [{"type": "identify", "userId": "u", "messageId": "m"}]}
        with httpx.Client(base_url=server.url, timeout=10) as http:
            response = http.post("/v1/batch", json=batch)
            assert response.status_code == 503
            assert response.json() == {
                "success": False,
                "error": "storage unavailable: storage is closed",
            }
            assert http.get("/v1/events").status_code == 503
            assert http.get("/health").json()["ok"] is True


def test_serving_in_a_thread_leaves_the_host_garbage_collector_alone(tmp_path: Path) -> None:
    """serve_in_thread runs inside someone else's process: ingesting through it neither
    freezes objects nor changes the collection thresholds (only `tracklane serve` does)."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    with serve_in_thread(tmp_path / "events.db") as server:
        batch = [{"type": "track", "userId": "u", "event": "E"} for _ in range(20)]
        answer = httpx.post(f"{server.url}/v1/batch", json={"batch": batch}, timeout=10)
        assert answer.json()["stored"] == 20
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)
