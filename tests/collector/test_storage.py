"""The SQLite store on its own: schema, durability settings, dedupe, queries."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tracklane.collector.storage import EventFilter, Storage, StorageError, StoredMessage


def row(message_id: str, **fields: Any) -> StoredMessage:
    """A stored-message row with sensible defaults."""
    values: dict[str, Any] = {
        "write_key": "k",
        "message_id": message_id,
        "type": "track",
        "user_id": "ann",
        "anonymous_id": None,
        "event": "Clicked",
        "received_at": "2024-05-01T10:00:00.000Z",
        "timestamp": "2024-05-01T09:59:59.000Z",
        "original_timestamp": None,
        "body": f'{{"type":"track","messageId":"{message_id}"}}',
    }
    values.update(fields)
    return StoredMessage(**values)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    """An open store on a fresh file."""
    store = Storage(tmp_path / "events.db")
    yield store
    store.close()


def test_database_uses_wal_and_full_sync(storage: Storage) -> None:
    """The file is in WAL mode and both connections use synchronous=FULL."""
    with closing(sqlite3.connect(storage.path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for conn in (storage._writer, storage._reader):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_insert_returns_new_rows_and_ignores_duplicates(storage: Storage) -> None:
    """A (write key, messageId) already stored is ignored; insert counts only new rows."""
    assert storage.insert([row("a"), row("b")]) == 2
    assert storage.insert([row("b"), row("c"), row("c")]) == 1
    assert storage.insert([row("a", write_key="other")]) == 1
    assert storage.insert([]) == 0
    assert storage.count(EventFilter()) == 4
    assert storage.count(EventFilter(write_key="k")) == 3


def test_rows_survive_reopening(tmp_path: Path) -> None:
    """What insert committed is there when the file is opened again."""
    first = Storage(tmp_path / "events.db")
    first.insert([row(str(n)) for n in range(50)])
    first.close()
    second = Storage(tmp_path / "events.db")
    try:
        assert second.count(EventFilter()) == 50
    finally:
        second.close()


def test_query_is_newest_first_with_server_fields(storage: Storage) -> None:
    """query returns bodies plus receivedAt/timestamp/originalTimestamp and seq, newest first."""
    storage.insert([row("old"), row("new", original_timestamp="2024-05-01T09:00:00Z")])
    new, old = storage.query(EventFilter(), limit=10)
    assert new == {
        "type": "track",
        "messageId": "new",
        "receivedAt": "2024-05-01T10:00:00.000Z",
        "timestamp": "2024-05-01T09:59:59.000Z",
        "originalTimestamp": "2024-05-01T09:00:00Z",
        "seq": 2,
    }
    assert old["messageId"] == "old"
    assert old["seq"] == 1
    assert [e["messageId"] for e in storage.query(EventFilter(), limit=1)] == ["new"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (EventFilter(type="identify"), ["2"]),
        (EventFilter(user_id="bob"), ["3"]),
        (EventFilter(anonymous_id="anon"), ["4"]),
        (EventFilter(event="Bought"), ["3"]),
        (EventFilter(since="2024-05-02T00:00:00.000Z"), ["4", "3"]),
        (EventFilter(write_key="k", user_id="ann"), ["2", "1"]),
        (EventFilter(write_key="nope"), []),
    ],
)
def test_filters(storage: Storage, where: EventFilter, expected: list[str]) -> None:
    """Each filter field narrows query and count the same way."""
    storage.insert(
        [
            row("1"),
            row("2", type="identify", event=None),
            row("3", user_id="bob", event="Bought", received_at="2024-05-02T00:00:00.000Z"),
            row("4", user_id=None, anonymous_id="anon", received_at="2024-05-03T00:00:00.000Z"),
        ]
    )
    assert [e["messageId"] for e in storage.query(where, limit=100)] == expected
    assert storage.count(where) == len(expected)


def test_concurrent_inserts_are_all_stored(storage: Storage) -> None:
    """Inserts from many threads at once are serialized without losing rows."""

    def insert(worker: int) -> None:
        for batch in range(10):
            storage.insert([row(f"{worker}-{batch}-{n}") for n in range(20)])

    threads = [threading.Thread(target=insert, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert storage.count(EventFilter()) == 6 * 10 * 20


def test_concurrent_inserts_of_the_same_rows_count_each_row_once(storage: Storage) -> None:
    """When threads race to insert the same rows, their returned counts add up to one each."""
    rows = [row(f"same-{n}") for n in range(50)]
    counts: list[int] = []
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


def test_close_is_idempotent_and_final(storage: Storage) -> None:
    """close() may be called twice; any later use raises StorageError."""
    storage.close()
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.insert([row("a")])
    with pytest.raises(StorageError, match="closed"):
        storage.count(EventFilter())


@pytest.mark.parametrize("path", [":memory:", ""])
def test_in_memory_database_is_refused(path: str) -> None:
    """The collector needs a file (its two connections must see the same data)."""
    with pytest.raises(StorageError, match="database file"):
        Storage(path)


@pytest.mark.parametrize(
    ("content", "version"),
    [(b"this is not a database, just text" * 100, None), (None, 99)],
)
def test_unusable_file_is_refused(
    tmp_path: Path, content: Optional[bytes], version: Optional[int]
) -> None:
    """A file that is not SQLite, or has another schema version, raises StorageError."""
    path = tmp_path / "other.db"
    if content is not None:
        path.write_bytes(content)
    else:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(f"PRAGMA user_version = {version}")
    with pytest.raises(StorageError):
        Storage(path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    """A path in a directory that does not exist raises StorageError naming it."""
    with pytest.raises(StorageError, match="cannot open"):
        Storage(tmp_path / "missing" / "events.db")


def test_cursor_after_is_oldest_first_and_before_newest_first(storage: Storage) -> None:
    """after=<seq> gives later events oldest first; before=<seq> earlier ones newest first."""
    storage.insert([row(str(n)) for n in range(10)])
    seqs = [event["seq"] for event in storage.query(EventFilter(), limit=100)]
    assert seqs == sorted(seqs, reverse=True)
    middle = seqs[5]
    after = storage.query(EventFilter(after=middle), limit=3)
    assert [e["seq"] for e in after] == [middle + 1, middle + 2, middle + 3]
    before = storage.query(EventFilter(before=middle), limit=3)
    assert [e["seq"] for e in before] == [middle - 1, middle - 2, middle - 3]
    assert storage.query(EventFilter(after=seqs[0]), limit=10) == []


def test_user_text_and_key_prefix_filters(storage: Storage) -> None:
    """user matches either id; text is a literal substring (%, _ escaped); key prefix works."""
    storage.insert(
        [
            row("a", user_id="bob", body='{"type":"track","note":"50% off"}'),
            row("b", user_id=None, anonymous_id="bob", body='{"type":"track","note":"5000 off"}'),
            row("c", write_key="other-key", body='{"type":"track","note":"a_b"}'),
        ]
    )

    def ids(where: EventFilter) -> list[str]:
        return sorted(r.body for r in storage.rows(where, 10))

    assert len(ids(EventFilter(user="bob"))) == 2
    assert ids(EventFilter(text="50% OFF")) == ['{"type":"track","note":"50% off"}']
    assert ids(EventFilter(text="a_b")) == ['{"type":"track","note":"a_b"}']
    assert ids(EventFilter(text="axb")) == []
    assert ids(EventFilter(write_key_prefix="other")) == ['{"type":"track","note":"a_b"}']
