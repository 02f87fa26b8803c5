"""The SQLite store on its own: schema, durability settings, files it refuses, filters.

What both stores do (dedupe, ordering, concurrency, close) is in ``test_store_rows.py``.
"""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tracklane.collector import _statements as statements
from tracklane.collector.storage import (
    PAGE_SIZE,
    WAL_CHECKPOINT_PAGES,
    EventFilter,
    Storage,
    StorageError,
    bind_none_directly,
)

from .support import row


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


def test_the_wal_is_checkpointed_past_its_threshold_and_stays_bounded(tmp_path: Path) -> None:
    """The WAL grows to about WAL_CHECKPOINT_PAGES pages, then a commit copies it into the
    database file and later commits reuse it from its start, so its file stays under the
    threshold plus a commit's pages; every event survives reopening."""
    path = tmp_path / "events.db"
    wal = Path(f"{path}-wal")
    frame = PAGE_SIZE + 24  # a WAL frame: its header and one page
    body = '"' + "x" * 2_000 + '"'
    rows_per_commit = 400  # about 100 pages per commit
    store = Storage(path)
    stored = 0
    largest_wal = 0
    after_checkpoint = 10  # commits once the first checkpoint has filled the database file
    try:
        for _ in range(200):  # some 160 MB of WAL pages: no checkpoint ran if the loop ends
            if not after_checkpoint:
                break
            batch = [
                row(str(uuid.uuid4()), body=f'{{"type":"track","padding":{body}}}')
                for _ in range(rows_per_commit)
            ]
            assert store.insert(batch) == rows_per_commit
            stored += rows_per_commit
            largest_wal = max(largest_wal, wal.stat().st_size)
            if path.stat().st_size > WAL_CHECKPOINT_PAGES * PAGE_SIZE // 2:
                after_checkpoint -= 1
        else:
            pytest.fail("the WAL was never checkpointed into the database file")
    finally:
        store.close()
    assert largest_wal > WAL_CHECKPOINT_PAGES * frame * 0.9
    assert largest_wal < (WAL_CHECKPOINT_PAGES + 2 * rows_per_commit) * frame
    again = Storage(path)
    try:
        assert again.count(EventFilter()) == stored
    finally:
        again.close()
    assert not wal.exists() or wal.stat().st_size == 0  # closed: checkpointed away


def test_a_file_with_other_pages_keeps_them_and_its_events(tmp_path: Path) -> None:
    """A new file gets 8 KiB pages; a file an older tracklane made with 4 KiB pages keeps its
    page size and its events, and takes new ones."""
    fresh = Storage(tmp_path / "new.db")
    fresh.close()
    with closing(sqlite3.connect(tmp_path / "new.db")) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 8192
    with closing(sqlite3.connect(tmp_path / "old.db")) as conn:
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
    old = Storage(tmp_path / "old.db")
    try:
        assert old.insert([row(str(n)) for n in range(300)]) == 300
    finally:
        old.close()
    again = Storage(tmp_path / "old.db")
    try:
        assert again.insert([row("300"), row("0")]) == 1
        assert again.count(EventFilter()) == 301
    finally:
        again.close()
    with closing(sqlite3.connect(tmp_path / "old.db")) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096


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


@pytest.mark.parametrize("unit", [100, 64, 512])
def test_statement_sizes_add_up_and_come_in_few_sizes(unit: int) -> None:
    """Bound values go in statements of ``unit`` and of powers of two below it, so that a
    connection compiles a dozen texts at most however many rows its commits hold."""
    seen = set()
    for count in range(3 * unit + 2):
        sizes = statements.sizes(count, unit)
        assert sum(sizes) == count
        assert sizes == sorted(sizes, reverse=True)
        seen.update(sizes)
    assert seen == {unit} | {1 << bit for bit in range(unit.bit_length()) if 1 << bit < unit}


def test_groups_of_every_size_store_each_new_row_once(storage: Storage) -> None:
    """Commits of 1 to 260 rows (several statements each, some rows already stored) store
    every new row once, in order, and count each request's new rows."""
    stored: list[str] = []
    for size in [1, 2, 3, 63, 64, 65, 99, 100, 101, 127, 200, 231, 260]:
        fresh = [f"m-{size}-{number}" for number in range(size)]
        again = stored[-(size // 3) :] if size >= 3 else []
        group = [[row(i) for i in fresh[: size // 2] + again], [row(i) for i in fresh]]
        counts = storage.insert_gathered(lambda group=group: group)  # type: ignore[misc]
        assert counts == [size // 2, size - size // 2]
        stored += fresh
    rows = storage.rows(EventFilter(after=0), 5000)
    assert [r.seq for r in rows] == list(range(1, len(stored) + 1))
    assert [r.body.split('"messageId":"')[1].split('"')[0] for r in rows] == stored


def test_none_is_stored_as_null_when_bound_directly(storage: Storage) -> None:
    """The writer process's adapter for None changes nothing stored: NULL, and the filters."""
    key = (type(None), sqlite3.PrepareProtocol)
    assert key not in sqlite3.adapters  # the test process never registers it otherwise
    bind_none_directly()
    try:
        storage.insert([row("m-1", user_id=None, anonymous_id="a"), row("m-2", event=None)])
    finally:
        del sqlite3.adapters[key]
    with closing(sqlite3.connect(storage.path)) as db:
        stored = db.execute(
            "SELECT message_id, user_id IS NULL, anonymous_id IS NULL, event IS NULL,"
            " original_timestamp IS NULL FROM events ORDER BY id"
        ).fetchall()
    assert stored == [("m-1", 1, 0, 0, 1), ("m-2", 0, 1, 1, 1)]
    assert [e["messageId"] for e in storage.query(EventFilter(user="a"), 10)] == ["m-1"]
