"""The SQLite store's deduplication: newest ids in memory, older ones merged into an index.

Merges are made small (``MERGE_AT``, ``PAIRS_PER_STEP``) so that every test crosses
several of them, and stops in the middle of one. The filter that spares lookups starts
at 64 ids, so it is outgrown and built again, and a reopened store reads its index into
it 16 ids at a time: retries arrive while a filter is being built.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from tracklane.collector import _message_ids
from tracklane.collector._message_ids import message_id_of, pair_key
from tracklane.collector.storage import SCHEMA_VERSION, EventFilter, Storage

from .support import row

MERGE_AT = 40
PAIRS_PER_STEP = 7
FILTER_IDS_PER_STEP = 16
FILTER_MIN_IDS = 64
IDS_BUCKETED_PER_STEP = MERGE_AT
RECENT_IDS_AT_MOST = 100
IDS_MOVED_PER_STEP = 15


@pytest.fixture(autouse=True)
def _small_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_message_ids, "MERGE_AT", MERGE_AT)
    monkeypatch.setattr(_message_ids, "IDS_BUCKETED_PER_STEP", IDS_BUCKETED_PER_STEP)
    monkeypatch.setattr(_message_ids, "RECENT_IDS_AT_MOST", RECENT_IDS_AT_MOST)
    monkeypatch.setattr(_message_ids, "IDS_MOVED_PER_STEP", IDS_MOVED_PER_STEP)
    monkeypatch.setattr(_message_ids, "PAIRS_PER_STEP", PAIRS_PER_STEP)
    monkeypatch.setattr(_message_ids, "FILTER_IDS_PER_STEP", FILTER_IDS_PER_STEP)
    monkeypatch.setattr(_message_ids, "FILTER_MIN_IDS", FILTER_MIN_IDS)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def storage(path: Path) -> Iterator[Storage]:
    store = Storage(path)
    yield store
    store.close()


def _ids(count: int) -> List[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


_BOTH_TABLES = "SELECT pair FROM message_ids UNION ALL SELECT pair FROM message_ids_recent"


def _index_state(path: Path) -> Tuple[int, int, int, int]:
    """(events, ids in the index's two tables, its ``through``, the newest event id)."""
    with closing(sqlite3.connect(path)) as db:
        events, newest = db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM events").fetchone()
        indexed = db.execute(f"SELECT COUNT(*) FROM ({_BOTH_TABLES})").fetchone()[0]
        through = db.execute("SELECT through FROM message_ids_merged").fetchone()[0]
    return events, indexed, through, newest


def _moved_on(path: Path) -> int:
    """Ids in ``message_ids``, where ``message_ids_recent`` moves its ids on."""
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM message_ids").fetchone()[0])


def _assert_index_consistent(path: Path) -> None:
    """Every event up to ``through`` has its pair in one of the index's tables, once, and
    nothing else is there."""
    with closing(sqlite3.connect(path)) as db:
        through = db.execute("SELECT through FROM message_ids_merged").fetchone()[0]
        listed = [key for (key,) in db.execute(_BOTH_TABLES)]
        indexed = set(listed)
        assert len(indexed) == len(listed)
        stored = db.execute("SELECT id, write_key, message_id FROM events").fetchall()
        numbers = dict(db.execute("SELECT write_key, id FROM write_keys").fetchall())
    assert len(set(numbers.values())) == len(numbers)
    keys = {
        pair_key(numbers[write_key], message_id) if write_key in numbers else "": seq
        for seq, write_key, message_id in stored
    }
    missing = [seq for key, seq in keys.items() if seq <= through and key not in indexed]
    strays = indexed - set(keys)
    assert (missing, strays) == ([], set())


WRITE_KEYS = ("k", "key-beta", "k:1", "k:")  # keys that a naive "key:id" joining confuses


def test_retries_of_any_age_are_never_stored_twice(storage: Storage, path: Path) -> None:
    """Retries of ids in memory, being merged, and merged are all recognised, per write key;
    the same messageId under another write key is another event."""
    rng = random.Random(12)
    sent: List[Tuple[str, str]] = []
    indexed_after: List[int] = []
    moved_after: List[int] = []
    for _ in range(60):
        fresh = [(rng.choice(WRITE_KEYS), message_id) for message_id in _ids(9)]
        retried = rng.sample(sent, min(len(sent), 6))
        batch = fresh + retried
        rng.shuffle(batch)
        assert storage.insert([row(i, write_key=key) for key, i in batch]) == len(fresh)
        sent += fresh
        indexed_after.append(_index_state(path)[1])
        moved_after.append(_moved_on(path))
    events, indexed, through, _ = _index_state(path)
    assert indexed >= through
    assert events == len(sent) == 540
    assert through > 0
    assert moved_after[-1] > 0
    steps = [after - before for before, after in zip(indexed_after, indexed_after[1:])]
    moves = [after - before for before, after in zip(moved_after, moved_after[1:])]
    assert len([step for step in steps if step]) > 20  # ... many, step by step:
    assert max(steps) <= 2 * 9  # twice what a commit brings, never a whole merge at once
    assert len([moved for moved in moves if moved]) >= 3  # and moved on, several times
    assert storage.insert([row(i, write_key=key) for key, i in sent]) == 0
    others = [(WRITE_KEYS[(WRITE_KEYS.index(key) + 1) % 4], i) for key, i in sent[:200]]
    assert storage.insert([row(i, write_key=key) for key, i in others]) == 200
    _assert_index_consistent(path)


def test_index_keys_of_different_pairs_differ() -> None:
    """A key is the write key's number, a colon and the messageId: pairs whose joined text
    would be the same ("1" + "1:x", "11" + ":x") still differ, and the messageId comes back."""
    pairs = [(1, "1:x"), (11, ":x"), (1, "1x"), (11, "x"), (2, ""), (1, "2:"), (12, ":")]
    keys = [pair_key(*pair) for pair in pairs]
    assert len(set(keys)) == len(pairs)
    assert [message_id_of(key) for key in keys] == [message_id for _, message_id in pairs]


def test_merges_write_their_ids_in_the_index_order(
    storage: Storage, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each merge writes its ids in the index's key order (so each index page is rewritten
    once per merge, not once per id): ids of any first character, under write keys whose
    prefixes have one and two digits, put in buckets over two steps and written bucket by
    bucket over several more. Moves from ``message_ids_recent`` on to ``message_ids`` go in
    key order too, over several steps."""
    monkeypatch.setattr(_message_ids, "IDS_BUCKETED_PER_STEP", 10)
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE merge_log (n INTEGER PRIMARY KEY, pair TEXT NOT NULL);
            CREATE TRIGGER log_merge AFTER INSERT ON message_ids_recent
                BEGIN INSERT INTO merge_log (pair) VALUES (NEW.pair); END;
            CREATE TABLE move_log (n INTEGER PRIMARY KEY, pair TEXT NOT NULL);
            CREATE TRIGGER log_move AFTER INSERT ON message_ids
                BEGIN INSERT INTO move_log (pair) VALUES (NEW.pair); END;
            """
        )
    rng = random.Random(7)
    firsts = "0123456789abcdefABCDEF-_~é\u00ff\u4e2d\U0001f600"
    keys = ("k", "key-beta", "a-write-key", "z")  # prefixes "1:k", "8:...", "11:...", "1:z"
    stored = 0
    for _ in range(40):
        batch = [(rng.choice(keys), rng.choice(firsts) + str(uuid.uuid4())) for _ in range(15)]
        stored += storage.insert([row(i, write_key=key) for key, i in batch])
    assert stored == 600
    with closing(sqlite3.connect(path)) as db:
        merged = [pair for (pair,) in db.execute("SELECT pair FROM merge_log ORDER BY n")]
        moved = [pair for (pair,) in db.execute("SELECT pair FROM move_log ORDER BY n")]
    merges = len(merged) // MERGE_AT  # each merges MERGE_AT ids or more
    assert merges >= 10
    assert _runs(merged) <= merges + 1  # one ascending run per merge (random order: ~300)
    assert len(moved) >= 2 * RECENT_IDS_AT_MOST
    assert _runs(moved) <= len(moved) // RECENT_IDS_AT_MOST + 1  # one per move
    _assert_index_consistent(path)


def _runs(keys: List[str]) -> int:
    """How many ascending runs ``keys`` make, in their order."""
    return 1 + sum(later < earlier for earlier, later in zip(keys, keys[1:]))


def test_merges_keep_up_with_commits_larger_than_a_step(storage: Storage, path: Path) -> None:
    """Commits of 20 new ids against steps of 7: the merge still outruns ingest, so the ids
    held in memory (those after ``through``) stay a few merges' worth, though a merge
    waits while ``message_ids_recent`` is moved on."""
    behind = []
    for _ in range(150):
        assert storage.insert([row(i) for i in _ids(20)]) == 20
        _, _, through, newest = _index_state(path)
        behind.append(newest - through)
    assert max(behind) <= 5 * MERGE_AT
    assert behind[-1] < 3000 - MERGE_AT  # and merges went on to the end


def test_a_repeated_id_counts_once_for_the_first_request_that_brought_it(
    storage: Storage,
) -> None:
    assert storage.insert([row("a"), row("a"), row("b")]) == 2
    assert storage.insert_gathered(lambda: [[row("c"), row("d")], [row("c"), row("e")]]) == [2, 1]
    assert storage.insert_gathered(lambda: [[row("a")], [row("f", write_key="other")]]) == [0, 1]
    assert storage.insert([row("f", write_key="k"), row("f", write_key="other")]) == 1


def test_a_reopened_store_finds_every_id_and_finishes_the_merge(path: Path) -> None:
    first = Storage(path)
    sent = _ids(95)
    for start in range(0, len(sent), 5):
        first.insert([row(i) for i in sent[start : start + 5]])
    events, indexed, through, newest = _index_state(path)
    assert 0 < through < newest
    assert indexed > 0
    first.close()

    second = Storage(path)
    try:
        assert second.insert([row(i) for i in sent]) == 0
        more = _ids(200)
        for start in range(0, len(more), 5):
            assert second.insert([row(i) for i in more[start : start + 5]]) == 5
        assert second.insert([row(i) for i in sent + more]) == 0
    finally:
        second.close()
    events, indexed, through, newest = _index_state(path)
    assert events == 295
    assert indexed >= 200
    _assert_index_consistent(path)


@pytest.mark.parametrize("ids_per_step", [40, 100_000])
def test_filters_built_while_ingesting_still_know_every_id(
    path: Path, monkeypatch: pytest.MonkeyPatch, ids_per_step: int
) -> None:
    """After a restart the filter is read from the index while events keep arriving, and
    it is outgrown and built again (sized for 1,024 ids, it sees 1,300): ids merged
    before, held in memory when a build starts, or stored during it are all found once it
    is done. A build in one step reads none of the ids merged after it; one of 40 ids a
    step outruns the 5 a commit brings, as 10,000 outrun a few hundred in production."""
    monkeypatch.setattr(_message_ids, "FILTER_IDS_PER_STEP", ids_per_step)
    before = _ids(300)
    first = Storage(path)
    for start in range(0, len(before), 5):
        first.insert([row(i) for i in before[start : start + 5]])
    first.close()

    second = Storage(path)
    try:
        after: List[str] = []
        for _ in range(400):
            fresh = _ids(5)
            assert second.insert([row(i) for i in fresh]) == 5
            after += fresh
            # The state is private; its only sign outside is speed. Stop once a filter is
            # complete, so that the retries below rely on it.
            if len(after) >= 1000 and not second._message_ids.filter_due():
                break
        assert not second._message_ids.filter_due()
        assert second.insert([row(i) for i in before + after]) == 0
    finally:
        second.close()
    _assert_index_consistent(path)


def test_two_connections_on_one_file_see_each_others_ids(path: Path) -> None:
    """As with ``tracklane serve --workers``: each writer learns what the other stored
    and merged, and neither stores a retry of the other's."""
    one, other = Storage(path), Storage(path)
    try:
        rng = random.Random(7)
        sent: List[str] = []
        for turn in range(80):
            writer = (one, other)[turn % 2]
            fresh = _ids(5)
            retried = rng.sample(sent, min(len(sent), 4))
            assert writer.insert([row(i) for i in fresh + retried]) == len(fresh)
            sent += fresh
        assert one.insert([row(i) for i in sent]) == 0
        assert other.insert([row(i) for i in sent]) == 0
        alone = _ids(300)  # several merges by one writer while the other waits
        for start in range(0, len(alone), 5):
            assert other.insert([row(i) for i in alone[start : start + 5]]) == 5
        assert one.insert([row(i) for i in alone + sent]) == 0
    finally:
        one.close()
        other.close()
    events, _indexed, through, _ = _index_state(path)
    assert events == 700
    assert through > 0
    _assert_index_consistent(path)


def test_a_failed_insert_leaves_its_ids_free_to_store(storage: Storage) -> None:
    ids = _ids(8)
    with pytest.raises(sqlite3.IntegrityError):
        storage.insert([row(i) for i in ids[:7]] + [row(ids[7], type=None)])
    assert storage.insert([row(i) for i in ids]) == 8
    assert storage.insert([row(i) for i in ids]) == 0


def test_a_merge_that_fails_leaves_no_write_key_number_behind(
    storage: Storage, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A merge step numbers its new write keys, then fails and is rolled back: the number it
    gave is forgotten with it, so a write key numbered meanwhile by another writer, which
    got that number, never shares its keys with the first."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE refuse (flag INTEGER NOT NULL);
            INSERT INTO refuse (flag) VALUES (1);
            CREATE TRIGGER refuse_merges BEFORE INSERT ON message_ids_recent
                WHEN (SELECT flag FROM refuse) BEGIN SELECT RAISE(ABORT, 'refused'); END;
            """
        )
    x_ids = _ids(45)
    with caplog.at_level("WARNING", logger="tracklane.collector"):
        storage.insert([row(i, write_key="x") for i in x_ids])
        for _ in range(5):  # the merge's steps: buckets, then a write that fails
            storage.insert([row(i, write_key="x") for i in _ids(1)])
            if "upkeep failed" in caplog.text:
                break
    assert "refused" in caplog.text
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM write_keys").fetchone()[0] == 0
        db.execute("INSERT INTO write_keys (write_key) VALUES ('y')")  # another writer's
        db.execute("UPDATE refuse SET flag = 0")
        db.commit()
    for _ in range(30):
        storage.insert([row(i, write_key="x") for i in _ids(5)])
    assert _index_state(path)[2] >= 45
    assert storage.insert([row(i, write_key="y") for i in x_ids]) == 45
    _assert_index_consistent(path)


_CHILD = """
import sys
from tracklane.collector import _message_ids
from tracklane.collector.storage import Storage, StoredMessage
_message_ids.MERGE_AT = 40
_message_ids.PAIRS_PER_STEP = 3
store = Storage(sys.argv[1])
for line in sys.stdin:
    ids = line.split()
    store.insert([
        StoredMessage("k", i, "track", "u", None, "E", "2024-05-01T10:00:00.000Z",
                      "2024-05-01T10:00:00.000Z", None, "{}")
        for i in ids
    ])
    print(" ".join(ids), flush=True)
"""


def test_a_writer_killed_during_merges_leaves_nothing_to_store_twice(path: Path) -> None:
    """kill -9 while merge steps run: every acknowledged id is still found after reopening,
    and the index ends up holding each stored event once."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    acknowledged: List[str] = []
    deadline = time.monotonic() + 60
    try:
        for _ in range(120):  # 600 ids: 15 merges of 40, in steps of 10 (twice a commit's)
            child.stdin.write(" ".join(_ids(5)) + "\n")
            child.stdin.flush()
            acknowledged += child.stdout.readline().split()
            assert time.monotonic() < deadline
        child.stdin.write(" ".join(_ids(5)) + "\n")  # the kill lands while it is stored
        child.stdin.flush()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
    assert len(acknowledged) == 600

    store = Storage(path)
    try:
        assert store.insert([row(i) for i in acknowledged]) == 0
        for _ in range(200):  # until a merge has taken every id the child stored
            assert store.insert([row(i) for i in _ids(5)]) == 5
            if _index_state(path)[2] >= 605:
                break
    finally:
        store.close()
    events, _, through, _ = _index_state(path)
    assert through >= 605
    assert events <= 605 + 5 * 200
    _assert_index_consistent(path)


# The events table of schema versions 1 (c4e7c4c, with ``UNIQUE (write_key, message_id)``
# where ``{unique}`` is) and 2 (9e6b4a3, without), copied on purpose: the upgrades have to
# keep working whatever the current schema becomes.
_OLD_EVENTS = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    write_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    user_id TEXT,
    anonymous_id TEXT,
    event TEXT,
    received_at TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    original_timestamp TEXT,
    body TEXT NOT NULL{unique}
);
"""
_VERSION_1 = (
    _OLD_EVENTS.format(unique=",\n    UNIQUE (write_key, message_id)") + "PRAGMA user_version = 1;"
)


def test_a_version_1_file_is_upgraded_keeping_its_events_and_their_ids(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_VERSION_1)
        db.executemany(
            "INSERT INTO events (write_key, message_id, type, user_id, anonymous_id, event,"
            " received_at, timestamp, original_timestamp, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row(f"old-{n}") for n in range(50)],
        )
        db.commit()
    with caplog.at_level("WARNING", logger="tracklane.collector"):
        store = Storage(path)
    assert f"upgrading {path} to schema version {SCHEMA_VERSION}" in caplog.text
    try:
        assert store.insert([row(f"old-{n}") for n in range(50)]) == 0
        assert store.insert([row("new-1"), row("old-3")]) == 1
        newest = store.rows(EventFilter(), 1)[0]
        assert newest.seq == 51
        assert '"new-1"' in newest.body
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
        ).fetchall()
        assert indexes == []  # the unique index that cost a random page per event is gone
        first = db.execute("SELECT id, message_id FROM events ORDER BY id LIMIT 1").fetchone()
        assert first == (1, "old-0")
    events, indexed, through, _ = _index_state(path)
    assert (events, indexed, through) == (51, 50, 50)
    _assert_index_consistent(path)


# Schema version 2 (9e6b4a3): its message_ids keyed by the write key's length, a colon, the
# write key and the messageId.
_VERSION_2 = (
    _OLD_EVENTS.format(unique="")
    + """
CREATE TABLE message_ids (pair TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE message_ids_merged (through INTEGER NOT NULL);
INSERT INTO message_ids_merged (through) VALUES (0);
PRAGMA user_version = 2;
"""
)


def test_a_version_2_file_gets_its_index_built_again_keeping_every_id(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The index of a schema-2 file held keys with the write keys in them; it is built again
    with their numbers, for the events merged before (up to ``through``), and the newer
    events' ids are read back into memory as usual: none of them is stored twice."""
    stored = [(WRITE_KEYS[n % 4], f"old-{n}") for n in range(60)]
    with closing(sqlite3.connect(path)) as db:
        db.executescript(_VERSION_2)
        db.executemany(
            "INSERT INTO events (write_key, message_id, type, user_id, anonymous_id, event,"
            " received_at, timestamp, original_timestamp, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row(message_id, write_key=key) for key, message_id in stored],
        )
        db.executemany(
            "INSERT INTO message_ids (pair) VALUES (?)",
            [(f"{len(key)}:{key}{message_id}",) for key, message_id in stored[:45]],
        )
        db.execute("UPDATE message_ids_merged SET through = 45")
        db.commit()
    with caplog.at_level("WARNING", logger="tracklane.collector"):
        store = Storage(path)
    assert f"upgrading {path} to schema version {SCHEMA_VERSION}" in caplog.text
    try:
        assert _index_state(path)[1:3] == (45, 45)
        _assert_index_consistent(path)
        assert store.insert([row(i, write_key=key) for key, i in stored]) == 0
        assert store.insert([row("old-1", write_key="k"), row("new", write_key="k")]) == 2
        for _ in range(20):  # merges go on with the numbered keys
            assert store.insert([row(i) for i in _ids(9)]) == 9
        assert store.insert([row(i, write_key=key) for key, i in stored]) == 0
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert _index_state(path)[2] > 60
    _assert_index_consistent(path)
