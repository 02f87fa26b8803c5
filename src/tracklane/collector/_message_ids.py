"""Exact deduplication by (write key, messageId) whose writes do not follow random ids.

Clients send random messageIds (UUIDs). A unique index on them lands each stored event on
a random page of a B-tree, so a commit of N events rewrote about N index pages into the
WAL: the SQLite writer spent 25-30 µs per event with random ids against 12 with growing
ones (docs/performance.md). So the index is kept in two parts:

- the ids of the newest events (``MERGE_AT`` at most) live in memory, in each process
  that writes; they are read back from the ``events`` table, which holds every event's
  write key and messageId, so nothing about them needs writing beyond the event itself;
- every older id is in the index: B-trees of one text key per pair, the write key's number
  (``write_keys``, each write key numbered when its first id is merged), a colon and the
  messageId (``pair_key``; one column inserts in about two thirds of the time of two, and
  a number keeps the keys short however long the write keys: keys holding a 32-character
  write key cost 40 % more to merge). When the newest ids reach ``MERGE_AT`` they are
  merged into ``message_ids_recent`` in key order, a few thousand per step between commits,
  which rewrites each of its pages at most once for all of them; ids that arrive meanwhile
  wait in memory for the next merge. When that table holds ``RECENT_IDS_AT_MOST`` ids, they
  are moved on into ``message_ids`` in key order, the same way.

A message is new when no part holds its pair: deduplication stays exact and forever, as
with the unique index. ``message_ids_merged.through`` is the newest event id whose pair the
index holds; a merge's last step moves it. A kill -9 at any point leaves the parts
consistent (a half-done merge is done again, its ids inserted with ``OR IGNORE``; each step
of a move is one transaction), and a process that opens the store, or sees that another
process merged, reads the newer ids again from ``events``.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import (
    AbstractSet,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from tracklane.collector import _statements as statements

__all__ = [
    "FILTER_IDS_PER_STEP",
    "FILTER_MIN_IDS",
    "IDS_BUCKETED_PER_STEP",
    "IDS_MOVED_PER_STEP",
    "MERGE_AT",
    "PAIRS_PER_STEP",
    "RECENT_IDS_AT_MOST",
    "SCHEMA",
    "MessageIds",
    "message_id_of",
    "pair_key",
]

# Ids held in memory before they are merged into ``message_ids_recent``. A merge rewrites each
# page it touches once for all its ids (see ``RECENT_IDS_AT_MOST``). 100,000 ids take about
# 13 MB in each writing process (twice that while a merge runs). See docs/performance.md.
MERGE_AT = 100_000
# Ids written per merge step (at least; twice what arrived since the last step if that is
# more): steps run between commits (``Storage.maintain``), so a merge never holds the writer
# for long. At 1.5 million stored events a step of 2,000 took 2-6 ms (when the first step
# sorted all the merge's ids, it took 85-90 ms: see ``IDS_BUCKETED_PER_STEP``); a merge of
# 100,000 in one transaction took 0.3 s at 300,000 stored events and 1.2 s at 3 million.
PAIRS_PER_STEP = 2_000

# The filter that spares most lookups in the index (see ``_Filter``): ids it is sized for at
# least, and ids it reads from the index per step while it is being built.
FILTER_MIN_IDS = 1 << 20
FILTER_IDS_PER_STEP = 10_000
# Ids a merge step puts in buckets (at least; see ``merge_step``), before the steps that
# write them: about 5 ms per 25,000.
IDS_BUCKETED_PER_STEP = 25_000
# Ids ``message_ids_recent`` holds before they are all moved on into ``message_ids`` (when a
# merge leaves at least that many), and how many a step moves (at least; ten times what
# arrived since the last step if that is more, so about a tenth of the table arrives in
# memory meanwhile). Writing N sorted ids into a table of P pages (130 keys to a page)
# rewrites about min(N, P) pages: merged straight into one table of 15 million ids, each id
# would cost a page of 8 KiB again, as the unique index on events did. Merged into
# ``message_ids_recent`` (about 8,000 pages at most) an id costs about 0.04 page, then moved
# on with a million others about (stored ids / 130 million) of a page in ``message_ids``.
RECENT_IDS_AT_MOST = 1_000_000
IDS_MOVED_PER_STEP = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS message_ids (pair TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS message_ids_recent (pair TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS write_keys (id INTEGER PRIMARY KEY, write_key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS message_ids_merged (through INTEGER NOT NULL);
INSERT INTO message_ids_merged (through)
    SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM message_ids_merged);
"""

# Keys per statement at most (SQLite's oldest limit of bound variables is 999), in the few
# sizes of ``_statements``.
_KEYS_PER_STATEMENT = 512
_lookup_statements: Dict[int, str] = {}
# The index's two tables, in the order a filter reads them.
_INDEX_TABLES = ("message_ids_recent", "message_ids")
_merge_statements: Dict[int, str] = {}
_NONE: FrozenSet[str] = frozenset()

Pair = Tuple[str, str]


class _Filter:
    """A Bloom filter of the stored messageIds, kept in memory by each writing process.

    "No" means an id is not in the index: a new event's id is looked up there only on
    a "maybe" (about 1 % of new ids when it holds as many ids as it was sized for) instead
    of one B-tree search (about 3 µs) per new event. Two probes into 16 bits per id, from
    Python's own hash of the string, which the in-memory sets have already computed. An id
    goes in when it is stored, not when it is merged: setting the bits then costs little
    more than testing them. Extra bits (an insert that failed) only cost a lookup.
    """

    def __init__(self, ids: int) -> None:
        self.capacity = max(ids, FILTER_MIN_IDS)
        self.size = 16 * self.capacity  # in bits
        self.bits = bytearray(self.size >> 3)

    def add(self, message_ids: Iterable[str]) -> None:
        bits, size = self.bits, self.size
        for message_id in message_ids:
            code = hash(message_id)
            first, second = code % size, (code >> 32) % size
            bits[first >> 3] |= 1 << (first & 7)
            bits[second >> 3] |= 1 << (second & 7)


class MessageIds:
    """Which (write key, messageId) pairs a SQLite store holds; one per writing connection.

    Every method runs with the store's write locks held (no other connection writes).
    """

    def __init__(self) -> None:
        self._merge_at = MERGE_AT
        self._pairs_per_step = PAIRS_PER_STEP
        # messageIds by write key of the events after ``_merged_through`` ...
        self._recent: Dict[str, Set[str]] = {}  # ... not being merged
        self._recent_count = 0
        self._merging: Dict[str, Set[str]] = {}  # ... being merged, up to ``_merge_through``
        self._merge_running = False
        self._merge_numbered = False  # whether the merge's write keys have their numbers
        self._moving = False  # whether ``message_ids_recent`` is being moved on
        # The same, as (write key, ids): those not yet in buckets, the first one's buckets so
        # far and how many of its ids they hold ...
        self._unbucketed: List[Tuple[str, List[str]]] = []
        self._buckets: Dict[str, List[str]] = {}
        self._bucketed = 0
        # ... and in buckets by first character, in the index's order once the merge's first
        # write has numbered the write keys; each bucket is sorted when the merge reaches it.
        self._merge_queue: List[Tuple[str, List[str]]] = []
        self._merge_key = 0  # the queue's write key being merged, and the next id's index
        self._merge_index = 0
        self._merge_through = 0
        self._seen_through = -1  # the newest event id whose pair is held; -1: not read yet
        self._merged_through = 0
        self._merged_any = False  # whether the index may hold anything
        self._new_since_step = 0
        self._filter: Optional[_Filter] = None  # complete: holds every id in the index
        self._building: Optional[_Filter] = None  # being filled from the index tables ...
        self._built_table = 0  # ... ``_INDEX_TABLES[_built_table]`` up to this key:
        self._built_after = ""
        # Write keys' numbers in ``write_keys`` (committed rows, which never change).
        self._key_numbers: Dict[str, int] = {}

    def sync(self, db: sqlite3.Connection) -> None:
        """Catch up with what other processes stored or merged since this one last wrote."""
        merged = int(db.execute("SELECT through FROM message_ids_merged").fetchone()[0])
        if self._seen_through < 0 or merged != self._merged_through:
            if merged != self._merged_through and (
                self._filter is not None or self._building is not None
            ):
                # Another process merged the ids of these events: the filters learn them.
                self._add_to_filters(
                    message_id
                    for (message_id,) in db.execute(
                        "SELECT message_id FROM events WHERE id > ? AND id <= ?",
                        (self._merged_through, merged),
                    )
                )
            self._reset(merged)
            if self._filter is None and self._building is None:
                self._start_filter(merged)
        newer = db.execute(
            "SELECT id, write_key, message_id FROM events WHERE id > ? ORDER BY id",
            (self._seen_through,),
        ).fetchall()
        if newer:
            recent = self._recent
            for _, write_key, message_id in newer:
                ids = recent.get(write_key)
                if ids is None:
                    ids = recent[write_key] = set()
                ids.add(message_id)
            self._add_to_filters([message_id for _, _, message_id in newer])
            self._recent_count = sum(len(ids) for ids in recent.values())
            self._seen_through = newer[-1][0]

    def _reset(self, merged_through: int) -> None:
        self._recent = {}
        self._recent_count = 0
        self._merging = {}
        self._clear_merge()
        self._seen_through = self._merged_through = merged_through
        self._merged_any = merged_through > 0

    def new(self, db: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> List[bool]:
        """Return, for each row (write key, messageId, ...) in order, whether its pair is
        stored neither before nor in an earlier row; the new ones count as stored from now
        on (call :meth:`stored` after the insert, or :meth:`forget` if it failed)."""
        recent = self._recent
        merging = self._merging
        fresh: List[bool] = []
        maybe: List[int] = []  # rows whose pair may be in the index: looked up there
        new = 0
        look = self._merged_any
        filter_ = self._filter
        bits, size = (filter_.bits, filter_.size) if filter_ else (None, 1)
        building = self._building
        last_key: Optional[str] = None
        held: Set[str] = set()
        being_merged: AbstractSet[str] = _NONE
        for index, row in enumerate(rows):
            write_key = row[0]
            message_id = row[1]
            if write_key != last_key:  # most requests, and groups, have one write key
                last_key = write_key
                held = recent.setdefault(write_key, set())
                being_merged = merging.get(write_key, _NONE)
            if message_id in held or message_id in being_merged:
                fresh.append(False)
                continue
            held.add(message_id)  # so a second copy in ``rows`` is a duplicate
            fresh.append(True)
            new += 1
            if building is not None:  # while a filter is built (after a restart, or bigger)
                building.add((message_id,))
            if bits is None:  # no filter yet: the index has to tell
                if look:
                    maybe.append(index)
                continue
            # The filter's probes (``_Filter.add``), inline as they run once per new event:
            # test, then set, since this id goes into the index at the next merge.
            code = hash(message_id)
            first = code % size
            second = (code >> 32) % size
            if (
                look
                and bits[first >> 3] & (1 << (first & 7))
                and bits[second >> 3] & (1 << (second & 7))
            ):
                maybe.append(index)
            bits[first >> 3] |= 1 << (first & 7)
            bits[second >> 3] |= 1 << (second & 7)
        if maybe:
            pairs = [(rows[index][0], rows[index][1]) for index in maybe]
            found = set(self._in_index(db, pairs))
            if found:  # retries of older events: rare
                for index, pair in zip(maybe, pairs):
                    if pair in found:
                        recent[pair[0]].discard(pair[1])
                        fresh[index] = False
                new -= len(found)
        self._recent_count += new
        self._new_since_step += new
        return fresh

    def stored(self, last_id: Optional[int]) -> None:
        """Note that the new pairs were stored, the newest with event id ``last_id``."""
        if last_id is not None and last_id > self._seen_through:
            self._seen_through = last_id

    def forget(self) -> None:
        """Something failed: read the newest ids, and write keys' numbers, again."""
        self._seen_through = -1
        self._key_numbers = {}  # a rolled-back merge may have numbered write keys

    def merge_due(self) -> bool:
        """Whether a merge is running, or enough ids are in memory to start one, or ids are
        being moved from ``message_ids_recent`` into ``message_ids``."""
        return self._moving or self._merge_running or self._recent_count >= self._merge_at

    def merge_step(self, db: sqlite3.Connection) -> None:
        """Write the next ids of the merge into ``message_ids_recent``, in key order, in one
        transaction; the last step also records what the index now holds. Or, while that
        table is being moved on, move the next of its ids (:meth:`_move_step`)."""
        if self._moving and not self._merge_running:
            self._move_step(db)
            return
        if not self._merge_running:
            self._start_merge()
            self._new_since_step = 0  # they are the merge's
        if self._unbucketed:  # the merge's first steps put its ids in buckets, in memory
            # Four times what arrived since the last step (a tenth of the cost of writing
            # them), so that these steps too outrun ingest.
            self._bucket_some(max(IDS_BUCKETED_PER_STEP, 4 * self._new_since_step))
            self._new_since_step = 0
            return
        # Twice what arrived since the last step, so that the merge outruns ingest however
        # many events a commit holds, and the ids waiting in memory stay bounded.
        step = max(self._pairs_per_step, 2 * self._new_since_step)
        self._new_since_step = 0
        with self._transaction(db):
            if not self._merge_numbered:
                self._number_merge(db)
            chunk: List[str] = []
            key, index = self._merge_key, self._merge_index
            while len(chunk) < step and key < len(self._merge_queue):
                write_key, ids = self._merge_queue[key]
                if index == 0:
                    ids.sort()  # a bucket first reached: a few ms, not one sort of the merge
                taken = ids[index : index + step - len(chunk)]
                prefix = f"{self._key_numbers[write_key]}:"
                chunk += [prefix + message_id for message_id in taken]
                index += len(taken)
                if index >= len(ids):
                    key, index = key + 1, 0
            done = key >= len(self._merge_queue)
            start = 0
            for size in statements.sizes(len(chunk), _KEYS_PER_STATEMENT):
                db.execute(_merge_statement(size), chunk[start : start + size])
                start += size
            if done:
                db.execute("UPDATE message_ids_merged SET through = ?", (self._merge_through,))
                (recent,) = db.execute("SELECT COUNT(*) FROM message_ids_recent").fetchone()
        self._merge_key, self._merge_index = key, index
        if done:
            self._moving = recent >= RECENT_IDS_AT_MOST
            self._merged_through = self._merge_through
            self._merged_any = True
            self._merging = {}
            self._clear_merge()
            if (
                self._filter
                and self._building is None
                and self._filter.capacity < self._merged_through
            ):
                self._start_filter(self._merged_through)  # a bigger one, to keep "maybe" rare

    def _move_step(self, db: sqlite3.Connection) -> None:
        """Move the next ids of ``message_ids_recent``, in key order, into ``message_ids``.

        One transaction per step, so each id is in one table or the other at every commit;
        a store reopened in the middle moves the rest when a merge next leaves enough.
        """
        step = max(IDS_MOVED_PER_STEP, 10 * self._new_since_step)
        self._new_since_step = 0
        with self._transaction(db):
            last = db.execute(
                "SELECT pair FROM message_ids_recent ORDER BY pair LIMIT 1 OFFSET ?", (step - 1,)
            ).fetchone()
            upto, bound = ("WHERE pair <= ?", last) if last is not None else ("", ())
            db.execute(
                "INSERT OR IGNORE INTO message_ids (pair)"
                f" SELECT pair FROM message_ids_recent {upto} ORDER BY pair",
                bound,
            )
            db.execute(f"DELETE FROM message_ids_recent {upto}", bound)
        self._moving = last is not None

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        """One step's write transaction; if it fails, rolled back and the state read again."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.forget()
            raise

    def filter_due(self) -> bool:
        """Whether a filter is being built (:meth:`filter_step` goes on with it)."""
        return self._building is not None

    def filter_step(self, db: sqlite3.Connection) -> None:
        """Read the next ids of the index into the filter being built."""
        building = self._building
        if building is None:
            return
        # ``message_ids_recent`` first: an id moved on while the filter is built leaves it
        # for ``message_ids``, read after it (each step of a move is one transaction).
        table = _INDEX_TABLES[self._built_table]
        keys = [
            key
            for (key,) in db.execute(
                f"SELECT pair FROM {table} WHERE pair > ? ORDER BY pair LIMIT ?",
                (self._built_after, FILTER_IDS_PER_STEP),
            )
        ]
        building.add(message_id_of(key) for key in keys)
        if len(keys) == FILTER_IDS_PER_STEP:
            self._built_after = keys[-1]
        elif self._built_table + 1 < len(_INDEX_TABLES):
            self._built_table, self._built_after = self._built_table + 1, ""
        else:
            self._filter, self._building, self._built_after = building, None, ""

    def _start_filter(self, ids: int) -> None:
        """Start a filter for about ``ids`` ids; an empty index needs no reading.

        It learns the ids held in memory now, as the index will hold them after their merge;
        then every id stored, as :meth:`new` and :meth:`sync` see it.
        """
        if ids == 0:
            self._filter = _Filter(ids)
            return
        self._building, self._built_table, self._built_after = _Filter(2 * ids), 0, ""
        for held in (self._recent, self._merging):
            for message_ids in held.values():
                self._building.add(message_ids)

    def _add_to_filters(self, message_ids: Iterable[str]) -> None:
        filters = [filter_ for filter_ in (self._filter, self._building) if filter_ is not None]
        if len(filters) > 1:
            message_ids = list(message_ids)  # read twice
        for filter_ in filters:
            filter_.add(message_ids)

    def _start_merge(self) -> None:
        """Freeze the in-memory ids as the merge's, to be put in buckets in the index's order.

        Python orders str by code point, as SQLite's BINARY collation orders UTF-8 bytes; a
        key's order is its prefix's (its write key's number), then its messageId's, whose
        first character picks the bucket. Sorting 100,000 ids at once held the writer for
        85-90 ms; they go into buckets (a sixteenth of them each, for UUIDs) a few ms at a
        time instead, and each bucket is sorted when the merge reaches it.
        """
        self._merging, self._recent, self._recent_count = self._recent, {}, 0
        self._clear_merge()
        self._merge_running = True
        self._unbucketed = [(write_key, list(ids)) for write_key, ids in self._merging.items()]
        self._merge_through = self._seen_through

    def _number_merge(self, db: sqlite3.Connection) -> None:
        """Number the merge's write keys (in its first write's transaction), and order its
        buckets by their keys' prefixes, keeping each write key's buckets in their order."""
        numbers = self._numbers(db, {write_key for write_key, _ in self._merge_queue}, True)
        self._merge_queue.sort(key=lambda entry: f"{numbers[entry[0]]}:")
        self._merge_numbered = True

    def _numbers(
        self, db: sqlite3.Connection, write_keys: AbstractSet[str], add: bool
    ) -> Dict[str, int]:
        """The numbers of ``write_keys`` in ``write_keys``, numbering those without one if
        ``add`` (in a write transaction), else leaving them out."""
        known = self._key_numbers
        missing = [write_key for write_key in write_keys if write_key not in known]
        if missing:
            if add:
                db.executemany(
                    "INSERT OR IGNORE INTO write_keys (write_key) VALUES (?)",
                    [(write_key,) for write_key in missing],
                )
            for start in range(0, len(missing), _KEYS_PER_STATEMENT):
                chunk = missing[start : start + _KEYS_PER_STATEMENT]
                marks = ", ".join("?" * len(chunk))
                known.update(
                    db.execute(
                        f"SELECT write_key, id FROM write_keys WHERE write_key IN ({marks})",
                        chunk,
                    ).fetchall()
                )
        return known

    def _bucket_some(self, count: int) -> None:
        """Put the next ``count`` ids of the merge in their buckets."""
        while count > 0 and self._unbucketed:
            write_key, ids = self._unbucketed[0]
            buckets = self._buckets
            end = min(len(ids), self._bucketed + count)
            for message_id in ids[self._bucketed : end]:
                first = message_id[:1]
                bucket = buckets.get(first)
                if bucket is None:
                    buckets[first] = [message_id]
                else:
                    bucket.append(message_id)
            count -= end - self._bucketed
            self._bucketed = end
            if end >= len(ids):
                self._merge_queue += [(write_key, buckets[first]) for first in sorted(buckets)]
                del self._unbucketed[0]
                self._buckets, self._bucketed = {}, 0

    def _clear_merge(self) -> None:
        self._merge_running = self._merge_numbered = False
        self._unbucketed, self._buckets, self._bucketed = [], {}, 0
        self._merge_queue = []
        self._merge_key = self._merge_index = 0

    def _in_index(self, db: sqlite3.Connection, pairs: List[Pair]) -> List[Pair]:
        numbers = self._numbers(db, {write_key for write_key, _ in pairs}, False)
        keys = {  # a write key without a number has no id in the index
            pair_key(numbers[write_key], message_id): (write_key, message_id)
            for write_key, message_id in pairs
            if write_key in numbers
        }
        listed = list(keys)
        found: List[Pair] = []
        start = 0
        for size in statements.sizes(len(listed), _KEYS_PER_STATEMENT):
            chunk = listed[start : start + size]
            found += [keys[key] for (key,) in db.execute(_lookup_statement(size), chunk)]
            start += size
        return found


def pair_key(key_number: int, message_id: str) -> str:
    """The key the index holds for a pair, given its write key's number in
    ``write_keys``: one string, and no two pairs share one (the number has no colon)."""
    return f"{key_number}:{message_id}"


def message_id_of(key: str) -> str:
    """The messageId in a key of the index."""
    return key[key.index(":") + 1 :]


def _lookup_statement(keys: int) -> str:
    statement = _lookup_statements.get(keys)
    if statement is None:
        marks = ", ".join(f"?{number}" for number in range(1, keys + 1))
        statement = _lookup_statements[keys] = " UNION ALL ".join(
            f"SELECT pair FROM {table} WHERE pair IN ({marks})" for table in _INDEX_TABLES
        )
    return statement


def _merge_statement(keys: int) -> str:
    return statements.text(
        _merge_statements,
        "INSERT OR IGNORE INTO message_ids_recent (pair) VALUES {}",
        "(?)",
        keys,
    )
