"""Exact deduplication by (write key, messageId) whose writes do not follow random ids.

Clients send random messageIds (UUIDs). A unique index on them lands each stored event on
a random page of a B-tree, so a commit of N events rewrote about N index pages into the
WAL: the SQLite writer spent 25-30 µs per event with random ids against 12 with growing
ones (docs/performance.md). So the index is kept in two parts:

- the ids of the newest events (``MERGE_AT`` at most) live in memory, in each process
  that writes; they are read back from the ``events`` table, which holds every event's
  write key and messageId, so nothing about them needs writing beyond the event itself;
- every older id is in the ``message_ids`` table (a B-tree keyed by write key and
  messageId). When the newest ids reach ``MERGE_AT`` they are written there in key order,
  a few thousand per step between commits, which rewrites each index page at most once
  for all of them; ids that arrive meanwhile wait in memory for the next merge.

A message is new when neither part holds its pair: deduplication stays exact and
forever, as with the unique index. ``message_ids_merged.through`` is the newest event id
whose pair ``message_ids`` holds; the merge's last step moves it. A kill -9 at any point
leaves the two parts consistent (a half-done merge is done again, its ids inserted with
``OR IGNORE``), and a process that opens the store, or sees that another process merged,
reads the newer ids again from ``events``.
"""

from __future__ import annotations

import sqlite3
from itertools import chain
from typing import AbstractSet, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

__all__ = ["MERGE_AT", "PAIRS_PER_STEP", "SCHEMA", "MessageIds"]

# Ids held in memory before they are merged into ``message_ids``. A merge rewrites each
# index page it touches once for all its ids: about min(ids, index pages) pages, where an
# 8 KiB page holds about 120 ids, so per stored event about (stored events / 12 million)
# index pages instead of one. 100,000 ids take about 15 MB in each writing process (twice
# that while a merge runs). See docs/performance.md.
MERGE_AT = 100_000
# Ids written per merge step: steps run between commits (``Storage.maintain``), so a merge
# never holds the writer for long. At 3 million stored events a step of 2,000 took about
# 20 ms; a merge of 100,000 in one transaction took about a second.
PAIRS_PER_STEP = 2_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS message_ids (
    write_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (write_key, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS message_ids_merged (through INTEGER NOT NULL);
INSERT INTO message_ids_merged (through)
    SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM message_ids_merged);
"""

# Pairs per statement: two bound variables each, under SQLite's oldest limit of 999.
_PAIRS_PER_STATEMENT = 499
_lookup_statements: Dict[int, str] = {}
_merge_statements: Dict[int, str] = {}
_NONE: FrozenSet[str] = frozenset()

Pair = Tuple[str, str]


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
        self._merge_queue: List[Tuple[str, List[str]]] = []  # the same, sorted
        self._merge_key = 0  # the queue's write key being merged, and the next id's index
        self._merge_index = 0
        self._merge_through = 0
        self._seen_through = -1  # the newest event id whose pair is held; -1: not read yet
        self._merged_through = 0
        self._merged_any = False  # whether ``message_ids`` may hold anything
        self._new_since_step = 0

    def sync(self, db: sqlite3.Connection) -> None:
        """Catch up with what other processes stored or merged since this one last wrote."""
        merged = int(db.execute("SELECT through FROM message_ids_merged").fetchone()[0])
        if self._seen_through < 0 or merged != self._merged_through:
            self._reset(merged)
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
            self._recent_count = sum(len(ids) for ids in recent.values())
            self._seen_through = newer[-1][0]

    def _reset(self, merged_through: int) -> None:
        self._recent = {}
        self._recent_count = 0
        self._merging = {}
        self._merge_queue = []
        self._seen_through = self._merged_through = merged_through
        self._merged_any = merged_through > 0

    def new(self, db: sqlite3.Connection, pairs: Sequence[Pair]) -> List[bool]:
        """Return, for each pair in order, whether it is stored neither before nor earlier in
        ``pairs``; the new ones count as stored from now on (call :meth:`stored` after the
        insert, or :meth:`forget` if it failed)."""
        recent = self._recent
        merging = self._merging
        fresh: List[bool] = []
        candidates: List[int] = []  # indexes into ``pairs`` of the new pairs, if not in the index
        last_key: Optional[str] = None
        held: Set[str] = set()
        being_merged: AbstractSet[str] = _NONE
        for index, (write_key, message_id) in enumerate(pairs):
            if write_key != last_key:  # most requests, and groups, have one write key
                last_key = write_key
                held = recent.setdefault(write_key, set())
                being_merged = merging.get(write_key, _NONE)
            if message_id in held or message_id in being_merged:
                fresh.append(False)
            else:
                held.add(message_id)  # so a second copy in ``pairs`` is a duplicate
                candidates.append(index)
                fresh.append(True)
        new = len(candidates)
        if candidates and self._merged_any:
            found = self._in_index(db, [pairs[index] for index in candidates])
            if found:  # retries of older events: rare
                where = {pairs[index]: index for index in candidates}
                for write_key, message_id in found:
                    recent[write_key].discard(message_id)
                    fresh[where[(write_key, message_id)]] = False
                new -= len(found)
        self._recent_count += new
        self._new_since_step += new
        return fresh

    def stored(self, last_id: Optional[int]) -> None:
        """Note that the new pairs were stored, the newest with event id ``last_id``."""
        if last_id is not None and last_id > self._seen_through:
            self._seen_through = last_id

    def forget(self) -> None:
        """Something failed: read the newest ids again before the next insert."""
        self._seen_through = -1

    def merge_due(self) -> bool:
        """Whether a merge is running, or enough ids are in memory to start one."""
        return bool(self._merge_queue) or self._recent_count >= self._merge_at

    def merge_step(self, db: sqlite3.Connection) -> None:
        """Write the next ids of the merge into ``message_ids``, in key order, in one
        transaction; the last step also records what ``message_ids`` now holds."""
        if not self._merge_queue:
            self._start_merge()
        # Twice what arrived since the last step, so that the merge outruns ingest however
        # many events a commit holds, and the ids waiting in memory stay bounded.
        step = max(self._pairs_per_step, 2 * self._new_since_step)
        self._new_since_step = 0
        chunk: List[str] = []
        key, index = self._merge_key, self._merge_index
        while len(chunk) < 2 * step and key < len(self._merge_queue):
            write_key, ids = self._merge_queue[key]
            taken = ids[index : index + step - len(chunk) // 2]
            for message_id in taken:
                chunk += (write_key, message_id)
            index += len(taken)
            if index >= len(ids):
                key, index = key + 1, 0
        done = key >= len(self._merge_queue)
        db.execute("BEGIN IMMEDIATE")
        try:
            per_statement = 2 * _PAIRS_PER_STATEMENT
            for start in range(0, len(chunk), per_statement):
                values = chunk[start : start + per_statement]
                db.execute(_merge_statement(len(values) // 2), values)
            if done:
                db.execute("UPDATE message_ids_merged SET through = ?", (self._merge_through,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.forget()
            raise
        self._merge_key, self._merge_index = key, index
        if done:
            self._merged_through = self._merge_through
            self._merged_any = True
            self._merging = {}
            self._merge_queue = []

    def _start_merge(self) -> None:
        """Freeze the in-memory ids as the merge's, sorted as SQLite orders the index."""
        # Python orders str by code point, as SQLite's BINARY collation orders UTF-8 bytes.
        self._merging, self._recent, self._recent_count = self._recent, {}, 0
        self._merge_queue = [(key, sorted(ids)) for key, ids in sorted(self._merging.items())]
        self._merge_key = self._merge_index = 0
        self._merge_through = self._seen_through

    def _in_index(self, db: sqlite3.Connection, pairs: List[Pair]) -> List[Pair]:
        found: List[Pair] = []
        for start in range(0, len(pairs), _PAIRS_PER_STATEMENT):
            chunk = pairs[start : start + _PAIRS_PER_STATEMENT]
            found += db.execute(
                _lookup_statement(len(chunk)), list(chain.from_iterable(chunk))
            ).fetchall()
        return found


def _lookup_statement(pairs: int) -> str:
    statement = _lookup_statements.get(pairs)
    if statement is None:
        values = ", ".join(["(?, ?)"] * pairs)
        statement = _lookup_statements[pairs] = (
            # CROSS JOIN keeps the pairs outermost: one primary-key search each (a row-value
            # IN (VALUES ...) scans the whole table instead).
            f"SELECT m.write_key, m.message_id FROM (VALUES {values}) AS v"
            " CROSS JOIN message_ids AS m ON m.write_key = v.column1 AND m.message_id = v.column2"
        )
    return statement


def _merge_statement(pairs: int) -> str:
    statement = _merge_statements.get(pairs)
    if statement is None:
        values = ", ".join(["(?, ?)"] * pairs)
        statement = _merge_statements[pairs] = (
            f"INSERT OR IGNORE INTO message_ids (write_key, message_id) VALUES {values}"
        )
    return statement
