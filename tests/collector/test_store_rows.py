"""What every event store does, the same on SQLite and PostgreSQL: dedupe, ordering and
the row cursor, the debugger's filters, concurrent inserts, close; and on PostgreSQL, a
reader following ``after=<seq>`` while several collectors write never skips a row.

Each store's own matters (files, URLs, restarts) are in ``test_storage.py`` and
``test_storage_pg.py``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, List, Set

import httpx
import pytest

from helpers import wait_until
from pg import PostgresServer, sessions_waiting_on_locks
from tracklane.collector import serve_in_thread
from tracklane.collector.storage import EventFilter, StorageError
from tracklane.collector.stores import EventStore, open_store

from .support import MakeMessage, row


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    """An open store on a fresh SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        opened = open_store(tmp_path / "events.db")
    else:
        pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
        opened = open_store(request.getfixturevalue("postgres").create_database("rows"))
    yield opened
    opened.close()


def _bodies(store: EventStore, where: EventFilter) -> List[str]:
    return sorted(found.body for found in store.rows(where, 10))


def test_cursor_orders_and_seq(store: EventStore) -> None:
    """Newest first; after=<seq> later rows oldest first; before=<seq> earlier, newest first."""
    store.insert([row(str(n)) for n in range(10)])
    store.insert([row("3"), row("10")])  # a duplicate is ignored; its seq is never served
    newest = store.rows(EventFilter(), 100)
    seqs = [found.seq for found in newest]
    assert newest[0].body == row("10").body
    assert len(seqs) == 11
    assert seqs == sorted(set(seqs), reverse=True)
    middle = seqs[5]
    assert [found.seq for found in store.rows(EventFilter(after=middle), 3)] == seqs[4:1:-1]
    assert [found.seq for found in store.rows(EventFilter(before=middle), 3)] == seqs[6:9]
    assert store.rows(EventFilter(after=seqs[0]), 10) == []
    assert [event["seq"] for event in store.query(EventFilter(after=middle), 3)] == seqs[4:1:-1]
    assert [event["seq"] for event in store.query(EventFilter(before=middle), 2)] == seqs[6:8]
    assert store.count(EventFilter(after=middle)) == 5
    assert store.count(EventFilter(before=middle)) == 5


def test_user_text_and_key_prefix_filters(store: EventStore) -> None:
    """user is either id; text is a literal substring, ASCII case folded only; key prefix."""
    store.insert(
        [
            row("a", user_id="bob", body='{"type":"track","note":"50% off"}'),
            row("b", user_id=None, anonymous_id="bob", body='{"type":"track","note":"5000 off"}'),
            row("c", write_key="other-key", body='{"type":"track","note":"a_b\\\\c"}'),
            row("d", write_key="oth", body='{"type":"track","note":"\u00c9clair"}'),
        ]
    )
    assert len(_bodies(store, EventFilter(user="bob"))) == 2
    assert len(_bodies(store, EventFilter(user="ann"))) == 2
    assert _bodies(store, EventFilter(text="50% OFF")) == ['{"type":"track","note":"50% off"}']
    assert _bodies(store, EventFilter(text="a_b\\\\")) == ['{"type":"track","note":"a_b\\\\c"}']
    assert _bodies(store, EventFilter(text="axb")) == []
    assert _bodies(store, EventFilter(text="\u00c9CLAIR")) == [
        '{"type":"track","note":"\u00c9clair"}'
    ]
    assert _bodies(store, EventFilter(text="\u00e9clair")) == []  # like SQLite: ASCII only
    assert _bodies(store, EventFilter(write_key_prefix="other")) == [
        '{"type":"track","note":"a_b\\\\c"}'
    ]
    assert len(_bodies(store, EventFilter(write_key_prefix="oth"))) == 2
    assert _bodies(store, EventFilter(write_key_prefix="%")) == []
    assert store.count(EventFilter(text="off", user="bob")) == 2
    for nul in (EventFilter(text="a\x00"), EventFilter(user="\x00"), EventFilter(event="\x00")):
        assert store.rows(nul, 10) == []  # matches nothing, on PostgreSQL too (no error)


def test_insert_returns_new_rows_and_ignores_duplicates(store: EventStore) -> None:
    """A (write key, messageId) already stored is ignored; insert counts only new rows."""
    assert store.insert([row("a"), row("b")]) == 2
    assert store.insert([row("b"), row("c"), row("c")]) == 1
    assert store.insert([row("a", write_key="other")]) == 1
    assert store.insert([]) == 0
    assert store.count(EventFilter()) == 4
    assert store.count(EventFilter(write_key="k")) == 3


def test_query_is_newest_first_with_server_fields(store: EventStore) -> None:
    """query returns bodies plus receivedAt/timestamp/originalTimestamp and seq, newest first."""
    store.insert([row("old"), row("new", original_timestamp="2024-05-01T09:00:00Z")])
    new, old = store.query(EventFilter(), limit=10)
    assert (old.pop("seq"), new.pop("seq")) == (1, 2)
    assert new == {
        "type": "track",
        "messageId": "new",
        "receivedAt": "2024-05-01T10:00:00.000Z",
        "timestamp": "2024-05-01T09:59:59.000Z",
        "originalTimestamp": "2024-05-01T09:00:00Z",
    }
    assert old["messageId"] == "old"
    assert [e["messageId"] for e in store.query(EventFilter(), limit=1)] == ["new"]


def test_concurrent_inserts_are_all_stored(store: EventStore) -> None:
    """Inserts from many threads at once are serialized without losing rows."""

    def insert(worker: int) -> None:
        for batch in range(10):
            store.insert([row(f"{worker}-{batch}-{n}") for n in range(20)])

    threads = [threading.Thread(target=insert, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert store.count(EventFilter()) == 6 * 10 * 20


def test_concurrent_inserts_of_the_same_rows_count_each_row_once(store: EventStore) -> None:
    """When threads race to insert the same rows, their returned counts add up to one each."""
    rows = [row(f"same-{n}") for n in range(50)]
    counts: List[int] = []
    start = threading.Barrier(6)

    def insert() -> None:
        start.wait(10)
        for chunk in (rows[:25], rows, rows[25:]):
            counts.append(store.insert(chunk))

    threads = [threading.Thread(target=insert) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 50
    assert store.count(EventFilter()) == 50


def test_close_is_idempotent_and_final(store: EventStore) -> None:
    """close() may be called twice; any later use raises StorageError."""
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.insert([row("a")])
    with pytest.raises(StorageError, match="closed"):
        store.count(EventFilter())


# -- PostgreSQL: several collectors writing one database ---------------------------------------


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    return postgres.create_database("cursor")


def test_a_row_committed_late_is_not_skipped_by_an_after_reader(dsn: str) -> None:
    """Collector A draws its seq, then its commit is held up; collector B inserts meanwhile.
    A reader following after=<seq> gets both rows, each once, in seq order."""
    import psycopg

    first, second = open_store(dsn), open_store(dsn)
    blocker = psycopg.connect(dsn)  # holds the unique key A's insert needs, uncommitted
    writers: List[threading.Thread] = []
    try:
        blocker.execute(
            "INSERT INTO tracklane_events (write_key, message_id, type, received_at, timestamp,"
            " body) VALUES ('k', 'late', 'track', 't', 't', '{}')"
        )
        writers.append(threading.Thread(target=first.insert, args=([row("late"), row("late-2")],)))
        writers[0].start()
        wait_until(
            lambda: sessions_waiting_on_locks(dsn) >= 1, 15.0, "collector A waits for the blocker"
        )
        writers.append(threading.Thread(target=second.insert, args=([row("early")],)))
        writers[1].start()
        wait_until(
            lambda: not writers[1].is_alive() or sessions_waiting_on_locks(dsn) >= 2,
            15.0,
            "collector B has stored its row or waits for its turn",
        )
        seen = first.rows(EventFilter(after=0), 100)  # what a live page polls meanwhile
        blocker.rollback()  # A's insert goes ahead
        for writer in writers:
            writer.join(timeout=15)
            assert not writer.is_alive()
        cursor = seen[-1].seq if seen else 0
        seen += first.rows(EventFilter(after=cursor), 100)
        assert sorted(found.body for found in seen) == sorted(
            row(name).body for name in ("late", "late-2", "early")
        )
        assert [found.seq for found in seen] == sorted({found.seq for found in seen})
    finally:
        blocker.close()
        for writer in writers:
            writer.join(timeout=15)
        first.close()
        second.close()


def test_two_collectors_writing_while_a_reader_follows(dsn: str, make_message: MakeMessage) -> None:
    """Two collector servers on one database take batches concurrently; a debugger reader
    following after=<seq> on one of them gets every event exactly once, in seq order."""
    per_writer, batch_size = 30, 5
    with serve_in_thread(dsn) as one, serve_in_thread(dsn) as two:
        sent: Set[str] = set()
        errors: List[str] = []

        def write(url: str) -> None:
            with httpx.Client(base_url=url, timeout=15) as http:
                for _ in range(per_writer):
                    batch = [make_message() for _ in range(batch_size)]
                    answer = http.post("/v1/batch", json={"batch": batch})
                    if answer.status_code != 200:
                        errors.append(answer.text)
                    sent.update(message["messageId"] for message in batch)

        writers = [threading.Thread(target=write, args=(server.url,)) for server in (one, two)]
        for writer in writers:
            writer.start()
        got: List[str] = []
        seqs: List[int] = []
        with httpx.Client(base_url=one.url, timeout=15) as reader:
            deadline = time.monotonic() + 30
            while (
                any(w.is_alive() for w in writers) or len(got) < 2 * per_writer * batch_size
            ) and time.monotonic() < deadline:
                answer = reader.get(
                    "/debugger/api/events", params={"after": seqs[-1] if seqs else 0}
                )
                assert answer.status_code == 200, answer.text
                for item in answer.json()["events"]:
                    seqs.append(item["seq"])
                    got.append(item["event"]["messageId"])
        for writer in writers:
            writer.join(timeout=15)
    assert errors == []
    assert len(got) == len(set(got)) == 2 * per_writer * batch_size
    assert set(got) == sent
    assert seqs == sorted(seqs)
