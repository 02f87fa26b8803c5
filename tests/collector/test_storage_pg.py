"""The PostgreSQL event store (``--db postgresql://``) against Debian's PostgreSQL."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Iterator, List

import httpx
import pytest

from pg import PostgresServer
from tracklane.collector import serve_in_thread
from tracklane.collector.storage import EventFilter, StorageError
from tracklane.collector.storage_pg import PostgresStorage
from tracklane.collector.stores import is_postgres_url, open_store

from .test_cli import Running, _tracklane
from .test_storage import row

pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL."""
    return postgres.create_database("events")


@pytest.fixture
def storage(dsn: str) -> Iterator[PostgresStorage]:
    """An open store on a fresh database."""
    store = PostgresStorage(dsn)
    yield store
    store.close()


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


def test_insert_returns_new_rows_and_ignores_duplicates(storage: PostgresStorage) -> None:
    """A (write key, messageId) already stored is ignored; insert counts only new rows."""
    assert storage.insert([row("a"), row("b")]) == 2
    assert storage.insert([row("b"), row("c"), row("c")]) == 1
    assert storage.insert([row("a", write_key="other")]) == 1
    assert storage.insert([]) == 0
    assert storage.count(EventFilter()) == 4
    assert storage.count(EventFilter(write_key="k")) == 3


def test_query_is_newest_first_with_server_fields(storage: PostgresStorage) -> None:
    """query returns bodies plus receivedAt/timestamp/originalTimestamp and seq, newest first."""
    storage.insert([row("old"), row("new", original_timestamp="2024-05-01T09:00:00Z")])
    new, old = storage.query(EventFilter(), limit=10)
    assert new.pop("seq") == old.pop("seq") + 1
    assert new == {
        "type": "track",
        "messageId": "new",
        "receivedAt": "2024-05-01T10:00:00.000Z",
        "timestamp": "2024-05-01T09:59:59.000Z",
        "originalTimestamp": "2024-05-01T09:00:00Z",
    }
    assert old["messageId"] == "old"
    assert [e["messageId"] for e in storage.query(EventFilter(), limit=1)] == ["new"]


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


def test_concurrent_inserts_of_the_same_rows_count_each_row_once(storage: PostgresStorage) -> None:
    """When threads race to insert the same rows, their returned counts add up to one each."""
    rows = [row(f"same-{n}") for n in range(50)]
    counts: List[int] = []
    start = threading.Barrier(6)

    def insert() -> None:
        start.wait(10)
        for chunk in (rows[:25], rows, rows[25:]):
            counts.append(storage.insert(chunk))

    threads = [threading.Thread(target=insert) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 50
    assert storage.count(EventFilter()) == 50


def test_close_is_idempotent_and_final(storage: PostgresStorage) -> None:
    """close() may be called twice; any later use raises StorageError."""
    storage.close()
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.insert([row("a")])
    with pytest.raises(StorageError, match="closed"):
        storage.count(EventFilter())


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


def test_serve_with_a_postgres_url_stores_there(dsn: str, tmp_path: Path) -> None:
    """``tracklane serve --db postgresql://...`` ingests into and reads from PostgreSQL."""
    server = Running([*_tracklane(), "serve", "--port", "0", "--db", dsn], tmp_path)
    try:
        with httpx.Client(base_url=server.url, auth=("k", ""), timeout=10) as http:
            batch = {"batch": [track(f"m{n}") for n in range(5)]}
            assert http.post("/v1/batch", json=batch).json()["stored"] == 5
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
