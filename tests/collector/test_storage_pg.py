"""The PostgreSQL event store (``--db postgresql://``) against Debian's PostgreSQL.

What both stores do (dedupe, ordering, concurrency, close) is in ``test_store_rows.py``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from pg import PostgresServer
from tracklane.collector import serve_in_thread
from tracklane.collector.storage import EventFilter, StorageError
from tracklane.collector.storage_pg import PostgresStorage
from tracklane.collector.stores import is_postgres_url, open_store

from .processes import Running, tracklane_command
from .support import row

pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL."""
    return postgres.create_database("events")


@pytest.mark.parametrize(
    ("location", "postgres_url"),
    [
        ("postgresql://u@127.0.0.1/db", True),
        ("postgres://u@h/db", True),
        ("POSTGRESQL://u@h/db", True),
        ("events.db", False),
        ("postgresql.db", False),
    ],
)
def test_the_db_value_picks_the_store_by_its_scheme(location: str, postgres_url: bool) -> None:
    """postgresql:// and postgres:// URLs name PostgreSQL; anything else is a SQLite file."""
    assert is_postgres_url(location) is postgres_url


def test_open_store_gives_postgres_for_a_url(dsn: str) -> None:
    """open_store() opens the PostgreSQL store for a URL, its path without a password."""
    store = open_store(dsn.replace("postgres@", "postgres:secret@"))
    try:
        assert isinstance(store, PostgresStorage)
        assert "secret" not in str(store.path)
        assert "postgres:***@" in str(store.path)
    finally:
        store.close()


def test_rows_are_shared_by_stores_on_one_database(dsn: str) -> None:
    """Two stores (two collectors) on one database see each other's rows and dedupe together."""
    first, second = PostgresStorage(dsn), PostgresStorage(dsn)
    try:
        assert first.insert([row("a"), row("b")]) == 2
        assert second.insert([row("b"), row("c")]) == 1
        assert first.count(EventFilter()) == second.count(EventFilter()) == 3
    finally:
        first.close()
        second.close()


def test_unreachable_database_is_refused_with_its_url(postgres: PostgresServer) -> None:
    """A database that does not exist raises StorageError naming the URL, never the password."""
    url = postgres.dsn_for("no_such_db").replace("postgres@", "postgres:pw@")
    with pytest.raises(StorageError, match="no_such_db") as caught:
        PostgresStorage(url, connect_timeout=3)
    assert "pw@" not in str(caught.value)


def test_a_server_restart_costs_one_503_then_requests_succeed(tmp_path: Path) -> None:
    """Requests in flight when PostgreSQL restarts get 503 (clients retry); then all is stored."""
    with PostgresServer() as server:
        dsn = server.create_database("restart")
        with (
            serve_in_thread(dsn) as collector,
            httpx.Client(base_url=collector.url, auth=("k", ""), timeout=10) as http,
        ):
            assert http.post("/v1/track", json=track("before")).status_code == 200
            server.restart()
            statuses = [
                http.post("/v1/track", json=track(f"after-{n}")).status_code for n in range(3)
            ]
            assert set(statuses) <= {200, 503}
            assert statuses[-1] == 200
            resent = [http.post("/v1/track", json=track(f"after-{n}")) for n in range(3)]
            assert all(r.status_code == 200 for r in resent)
            assert http.get("/v1/events/count").json() == {"count": 4}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_serve_with_a_postgres_url_stores_there(dsn: str, tmp_path: Path, workers: str) -> None:
    """``tracklane serve --db postgresql://...`` ingests into and reads from PostgreSQL, with
    or without ingest workers (which store there themselves), counting a resent batch as
    duplicates."""
    command = [*tracklane_command(), "serve", "--port", "0", "--db", dsn, "--workers", workers]
    server = Running(command, tmp_path)
    try:
        with httpx.Client(base_url=server.url, auth=("k", ""), timeout=10) as http:
            batch = {"batch": [track(f"m{n}") for n in range(5)]}
            assert http.post("/v1/batch", json=batch).json()["stored"] == 5
            assert http.post("/v1/batch", json=batch).json()["duplicates"] == 5
            assert http.get("/v1/events/count").json() == {"count": 5}
        code, _ = server.stop(signal.SIGTERM)
        assert code == 0, server.stderr()
    finally:
        server.close()
    store = PostgresStorage(dsn)
    try:
        assert store.count(EventFilter(write_key="k")) == 5
    finally:
        store.close()
    assert not (tmp_path / "tracklane-events.db").exists()


def track(message_id: str) -> dict[str, object]:
    """A valid track message."""
    return {"type": "track", "event": "E", "userId": "u", "messageId": message_id}
