"""What serialising PostgreSQL inserts costs the store (``storage_pg``), measured apart.

The PostgreSQL event store takes a transaction-level advisory lock before each insert so
that seq order is commit order (a reader following ``after=<seq>`` never skips a row
committed late). This runs ``PostgresStorage.insert`` from ``--threads`` threads spread
over ``--stores`` stores (collectors) on one durable PostgreSQL (Debian's, started by
``tests/pg.py``, fsync and synchronous commit on), interleaving rounds with the lock and
rounds with the lock replaced by a no-op, and prints rows/s per round and the medians.

    python bench/pg_insert_order.py --batch 100 --stores 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tracklane.collector.storage_pg as storage_pg
from pg import PostgresServer
from tracklane.collector.storage import StoredMessage

BODY = (
    '{"type":"track","event":"Order Completed","properties":{"total":12.5,"currency":"EUR"},'
    '"context":{"ip":"10.0.0.1","userAgent":"Mozilla/5.0 (X11; Linux x86_64)"}}'
)
LOCKED = storage_pg._INSERT
UNLOCKED = LOCKED.replace("SELECT pg_advisory_xact_lock(hashtext(%s))", "SELECT hashtext(%s)")


def _messages(count: int) -> List[StoredMessage]:
    now = "2024-05-01T10:00:00.000Z"
    return [
        StoredMessage(
            "k", str(uuid.uuid4()), "track", "u", None, "Order Completed", now, now, None, BODY
        )
        for _ in range(count)
    ]


def _round(
    stores: List[storage_pg.PostgresStorage], threads: int, batch: int, secs: float
) -> float:
    stop = time.monotonic() + secs
    counts = [0] * threads

    def work(index: int) -> None:
        store = stores[index % len(stores)]
        while time.monotonic() < stop:
            counts[index] += store.insert(_messages(batch))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / secs


def main(argv: Optional[List[str]] = None) -> int:
    """Run the interleaved rounds and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100, help="rows per insert")
    parser.add_argument("--threads", type=int, default=4, help="concurrent inserting threads")
    parser.add_argument("--stores", type=int, default=1, help="stores (collectors) sharing them")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each variant")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    args = parser.parse_args(argv)
    assert UNLOCKED != LOCKED, "the insert statement changed; update this bench"
    rates: Dict[str, List[float]] = {"serialised (lock)": [], "unordered (no lock)": []}
    with PostgresServer(durable=True) as server:
        dsn = server.create_database("order")
        stores = [storage_pg.PostgresStorage(dsn) for _ in range(args.stores)]
        try:
            for _ in range(args.rounds):
                for name, sql in (("unordered (no lock)", UNLOCKED), ("serialised (lock)", LOCKED)):
                    storage_pg._INSERT = sql
                    rates[name].append(_round(stores, args.threads, args.batch, args.seconds))
        finally:
            storage_pg._INSERT = LOCKED
            for store in stores:
                store.close()
    print(
        f"PostgresStorage.insert, {args.threads} threads over {args.stores} store(s), "
        f"{args.batch} rows per insert, durable PostgreSQL"
    )
    for name, values in rates.items():
        listed = ", ".join(f"{value:,.0f}" for value in values)
        print(f"  {name}: {listed}; median {statistics.median(values):,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
