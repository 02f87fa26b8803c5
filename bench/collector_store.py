"""The SQLite store alone: CPU per event of inserting groups of events, as the writer does.

Inserts ``--events`` events (realistic size, random UUID messageIds or, with
``--growing-ids``, ids that mostly grow) in groups of ``--group`` rows, one commit each,
calling ``Storage.maintain()`` after each as the writer process does, into a new file;
prints this process's CPU time per event over the whole run, over its second half (where
the store is bigger) and in ``maintain()`` (the messageId merges), and the longest
``maintain()`` step. No HTTP, no other process: what the SQLite writer spends per event,
without the noise of the server.

    python bench/collector_store.py                          # 400,000 events, random ids
    python bench/collector_store.py --growing-ids
    python bench/collector_store.py --write-key "$(printf 'k%.0s' $(seq 32))"  # 32 characters
    # before/after: another source tree, in turn
    git archive main src | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src python bench/collector_store.py
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import tempfile
import time
import uuid
from typing import Callable, List

from tracklane.collector import storage
from tracklane.collector.storage import EventFilter, Storage, StoredMessage

_BODY = '{"type":"track","event":"Order Completed","properties":{"a":1,"b":"hello world"}}' * 6


def make_groups(
    events: int, group: int, growing: bool, write_key: str = "bench-key"
) -> List[List[StoredMessage]]:
    """The rows to insert, built before the clock starts."""
    counter = itertools.count()

    def message_id() -> str:
        return f"{next(counter):012d}-{uuid.uuid4()}" if growing else str(uuid.uuid4())

    now = "2026-11-30T00:00:00.000Z"
    return [
        [
            StoredMessage(
                write_key, message_id(), "track", None, "anon", "x", now, now, None, _BODY
            )
            for _ in range(group)
        ]
        for _ in range(events // group)
    ]


def _one_request(rows: List[StoredMessage]) -> List[List[StoredMessage]]:
    return [rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--group", type=int, default=120, help="rows per commit")
    parser.add_argument("--growing-ids", action="store_true", help="ids that mostly grow")
    parser.add_argument(
        "--write-key",
        default="bench-key",
        help="the events' write key (Segment's are 32 characters long)",
    )
    args = parser.parse_args()
    groups = make_groups(args.events, args.group, args.growing_ids, args.write_key)
    getattr(storage, "bind_none_directly", lambda: None)()  # as the writer process does
    with tempfile.TemporaryDirectory(prefix="tracklane-store-bench-") as directory:
        store = Storage(os.path.join(directory, "events.db"))
        maintain: Callable[[], None] = getattr(store, "maintain", lambda: None)  # older trees
        try:
            longest = upkeep_cpu = 0.0
            start_cpu = time.process_time()
            half_cpu = start_cpu
            for number, rows in enumerate(groups):
                store.insert_gathered(functools.partial(_one_request, rows))
                began, began_cpu = time.perf_counter(), time.process_time()
                maintain()
                longest = max(longest, time.perf_counter() - began)
                upkeep_cpu += time.process_time() - began_cpu
                if number == len(groups) // 2:
                    half_cpu = time.process_time()
            end_cpu = time.process_time()
            # Every event stored once, and retries of any age stored never.
            retries = [rows[0] for rows in groups[:: max(1, len(groups) // 50)]]
            again = store.insert(retries)
            stored = store.count(EventFilter())
        finally:
            store.close()
    events = len(groups) * args.group
    ids = "growing messageIds" if args.growing_ids else "random messageIds"
    print(
        f"SQLite store, {events:,} events in commits of {args.group}, {ids},"
        f" a write key of {len(args.write_key)} characters"
    )
    print(f"  CPU per event: {(end_cpu - start_cpu) / events * 1e6:.1f} µs")
    second_half = events - (len(groups) // 2 + 1) * args.group
    print(f"  second half: {(end_cpu - half_cpu) / second_half * 1e6:.1f} µs")
    print(f"  of which maintain() (merges): {upkeep_cpu / events * 1e6:.2f} µs")
    print(f"  longest maintain() step: {longest * 1000:.1f} ms")
    ok = again == 0 and stored == events
    print(
        f"  verification: {'OK' if ok else 'FAILED'} ({stored:,} stored; {again} of"
        f" {len(retries)} retries stored again)"
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
