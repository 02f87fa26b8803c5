"""Routed rate of the collector into the warehouse: stored events loaded into PostgreSQL.

Starts Debian's PostgreSQL in a temporary directory (``tests/pg.py``, fsync and
synchronous commit on), then a collector subprocess (SQLite store) whose ``--config``
routes to a ``postgres`` destination on it, and posts ``--events`` realistic events
(acknowledged, so durable). Meanwhile the bench holds the warehouse's schema lock (the
advisory lock the loader takes before creating its tables), so the first load waits
like the webhook bench's receiver holds its first request; it then releases the lock
and times how long the outbox takes until every event is in the warehouse. Checked:
each table holds exactly the events of its type, every messageId once (tracks, one
table per event name, identifies, pages, and one ``users`` row per identified user).

``--direct`` measures the loader alone instead: the same events, as stored, loaded
with ``PostgresWarehouse.load`` in batches of ``--batch`` (the destination's claim size)
in this process, with this process's and the PostgreSQL backend's CPU time per event;
with ``--row-builders N`` as the destination loads them (their stored JSON, through
``load_encoded``, rows built in N worker processes, whose CPU is counted too).

    python bench/collector_warehouse.py --events 50000
    python bench/collector_warehouse.py --events 50000 --direct
    python bench/collector_warehouse.py --events 50000 --direct --row-builders 1
"""

from __future__ import annotations

import argparse
import os
import random
import selectors
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import httpx
import orjson
from collector_ingest import (
    URL_PREFIX,
    _iso,
    _postgres,
    _src_path,
    cpu_seconds,
    process_tree,
    realistic_message,
)

SCHEMA = "bench"


def _server_cpu(data_dir: Path) -> Optional[float]:
    """CPU seconds used so far by the PostgreSQL server: the postmaster and its children."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            # Own time plus that of children already waited for (ended backends).
            ticks = sum(int(f) for f in fields[11:15])
            total += ticks / os.sysconf("SC_CLK_TCK")
    return total


def _tree_cpu(pid: int) -> Dict[int, float]:
    """CPU seconds used so far by the collector and each of its child processes (the row
    builders, and the SQLite writer process, idle while the bench routes)."""
    found = {}
    for each in process_tree(pid):
        seconds = cpu_seconds(each)
        if seconds is not None:
            found[each] = seconds
    return found


_POLL = 0.005  # seconds between looks at the collector's count of delivered events


def _await_delivered(
    database: Path, events: int, began: float, deadline: float
) -> Tuple[float, int, float]:
    """When the first load was delivered (seconds from ``began``, and how many events by
    then), and when every event was.

    Reads the collector's own count (``route_cursor.delivered``, settled right after each
    load's commit) from its SQLite file: a look costs a few microseconds, where counting the
    warehouse's rows cost PostgreSQL milliseconds of the CPU being measured.
    """
    first: Optional[Tuple[float, int]] = None
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        while True:
            row = db.execute(
                "SELECT delivered FROM route_cursor WHERE destination = 'Warehouse'"
            ).fetchone()
            delivered = int(row[0]) if row else 0
            now = time.monotonic()
            if delivered and first is None:
                first = (now - began, delivered)
            if delivered >= events:
                return (first or (0.0, 0)) + (now - began,)
            if now > deadline:
                raise RuntimeError(f"only {delivered} of {events} delivered in time")
            time.sleep(_POLL)  # a poll interval, bounded by the deadline above


def _expected(messages: List[Dict[str, Any]]) -> Dict[str, int]:
    """Rows each table must end up with."""
    from tracklane.collector.destinations.warehouse_rows import snake_case

    counts: Counter[str] = Counter()
    users = set()
    for message in messages:
        kind = message["type"]
        if kind == "track":
            counts["tracks"] += 1
            counts[snake_case(message["event"])] += 1
        elif kind == "identify":
            counts["identifies"] += 1
            users.add(message["userId"])
        else:
            counts[{"page": "pages", "screen": "screens", "group": "groups"}[kind]] += 1
    counts["users"] = len(users)
    return dict(counts)


def _count(conn: Any, tables: List[str]) -> Dict[str, int]:
    found = {}
    for table in tables:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name = %s",
            [SCHEMA, table],
        ).fetchone()
        if row[0]:
            found[table] = int(
                conn.execute(f'SELECT count(*) FROM {SCHEMA}."{table}"').fetchone()[0]
            )
        else:
            found[table] = 0
    return found


def _direct(dsn: str, messages: List[Dict[str, Any]], batch: int, builders: int) -> None:
    """Load ``messages`` with the loader in this process; print rate and CPU per event."""
    from tracklane.collector._json import dumps
    from tracklane.collector.destinations.warehouse import PostgresWarehouse

    warehouse = PostgresWarehouse(dsn, row_builders=builders)
    bodies = [dumps(message) for message in messages]
    try:
        warehouse.load(SCHEMA, [])  # connect and create the schema outside the clock
        if builders:
            warehouse.load_encoded(SCHEMA, [])  # start the builders outside the clock too
        conn = warehouse._idle[-1].conn  # the loader's session, to read its backend's CPU
        assert conn is not None
        backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        wal_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        own_before, server_before = _tree_cpu(os.getpid()), cpu_seconds(backend)
        began = time.monotonic()
        for start in range(0, len(messages), batch):
            if builders:
                warehouse.load_encoded(SCHEMA, bodies[start : start + batch])
            else:
                warehouse.load(SCHEMA, messages[start : start + batch])
        elapsed = time.monotonic() - began
        own_after, server = _tree_cpu(os.getpid()), cpu_seconds(backend)
        wal = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", [wal_before]
        ).fetchone()[0]
    finally:
        warehouse.close()
    used = {pid: after - own_before.get(pid, 0.0) for pid, after in own_after.items()}
    own = used.get(os.getpid(), 0.0)
    others = sum(used.values()) - own
    how = f"load_encoded, {builders} row builders" if builders else "load"
    print(f"warehouse loader alone (PostgresWarehouse.{how}, batches of {batch})")
    print(f"  events: {len(messages)} in {elapsed:.2f} s")
    print(f"  load rate: {len(messages) / elapsed:,.0f} events/s")
    print(f"  loader CPU: {(own + others) / len(messages) * 1e6:.1f} µs/event", end="")
    print(f" (row builders {others / len(messages) * 1e6:.1f})" if builders else "")
    if server is not None and server_before is not None:
        per_event = (server - server_before) / len(messages) * 1e6
        print(f"  PostgreSQL backend CPU: {per_event:.1f} µs/event")
    print(f"  WAL written: {float(wal) / len(messages):,.0f} bytes/event (fsynced at each commit)")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print the routed rate into the warehouse."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for loads")
    parser.add_argument("--direct", action="store_true", help="time the loader alone")
    parser.add_argument(
        "--batch", type=int, default=2000, help="events per load (--direct; the claim size)"
    )
    parser.add_argument(
        "--row-builders", type=int, default=0, help="worker processes building rows (--direct)"
    )
    args = parser.parse_args(argv)
    import psycopg

    rng = random.Random(5)
    now = _iso(datetime.now(timezone.utc))
    template = [realistic_message(rng, now) for _ in range(500)]
    # Random version-4 UUIDs, as Segment's libraries send (random keys into the id index).
    messages = [
        {
            **template[i % len(template)],
            "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        }
        for i in range(args.events)
    ]
    expected = _expected(messages)
    with tempfile.TemporaryDirectory(prefix="tracklane-wh-") as tmp, _postgres() as server:
        if server is None:
            return 0  # PostgreSQL is not installed here (said above)
        dsn = server.create_database("warehouse")
        if args.direct:
            stored = [{**m, "receivedAt": now, "originalTimestamp": now} for m in messages]
            _direct(dsn, stored, args.batch, args.row_builders)
            with psycopg.connect(dsn, autocommit=True) as conn:
                found = _count(conn, sorted(expected))
            ok = found == expected
            print("  verification:", "OK" if ok else f"MISMATCH: {found} != {expected}")
            return 0 if ok else 1
        holder = psycopg.connect(dsn, autocommit=True)
        holder.execute(  # the lock PostgresWarehouse takes before creating the schema
            "SELECT pg_advisory_lock(hashtext('tracklane.warehouse'), hashtext(%s))", [SCHEMA]
        )
        config = Path(tmp) / "tracklane.toml"
        config.write_text(
            f'[[sources]]\nname = "{SCHEMA}"\nwrite_keys = ["bench-key"]\n\n'
            f'[[destinations]]\nname = "Warehouse"\ntype = "postgres"\ndsn = "{dsn}"\n'
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_src_path(), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "tracklane.collector", "--port", "0"]
        command += ["--db", str(Path(tmp) / "events.db"), "--config", str(config)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                if not selector.select(30):
                    raise RuntimeError("the collector did not start within 30 s")
            url = proc.stdout.readline().decode().strip()[len(URL_PREFIX) :]
            with httpx.Client(base_url=url, auth=("bench-key", ""), timeout=60) as http:
                for start in range(0, args.events, 500):
                    batch = messages[start : start + 500]
                    response = http.post("/v1/batch", content=orjson.dumps({"batch": batch}))
                    if response.status_code != 200 or response.json()["stored"] != len(batch):
                        raise RuntimeError(f"ingest failed: {response.text[:300]}")
            collector_before = _tree_cpu(proc.pid)
            server_before = _server_cpu(server.data_dir)
            began = time.monotonic()
            holder.execute(
                "SELECT pg_advisory_unlock(hashtext('tracklane.warehouse'), hashtext(%s))",
                [SCHEMA],
            )
            first, first_count, elapsed = _await_delivered(
                Path(tmp) / "events.db", args.events, began, began + args.timeout
            )
            collector_after = _tree_cpu(proc.pid)
            server_after = _server_cpu(server.data_dir)
            with psycopg.connect(dsn, autocommit=True) as conn:
                found = _count(conn, sorted(expected))
                distinct = {
                    table: int(
                        conn.execute(
                            f'SELECT count(DISTINCT id) FROM {SCHEMA}."{table}"'
                        ).fetchone()[0]
                    )
                    for table in expected
                }
        finally:
            holder.close()
            proc.terminate()
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()
    ok = found == expected == distinct
    print("collector routing to the warehouse (postgres destination; SQLite store)")
    print(f"  events: {args.events} loaded in {elapsed:.2f} s; rows per table: {found}")
    print(f"  routed: {args.events / elapsed:,.0f} events/s")
    if elapsed > first and args.events > first_count:
        steady = (args.events - first_count) / (elapsed - first)
        print(
            f"  the first {first_count} events delivered after {first:.2f} s (the schema's"
            f" tables created); from then on: {steady:,.0f} events/s"
        )
    used = {pid: after - collector_before.get(pid, 0.0) for pid, after in collector_after.items()}
    if proc.pid in used:
        total = sum(used.values()) / args.events * 1e6
        router = used[proc.pid] / args.events * 1e6
        print(
            f"  collector CPU: {total:.1f} µs/event (its process {router:.1f},"
            f" its {len(used) - 1} child processes, row builders and the SQLite writer,"
            f" {total - router:.1f})"
        )
    if server_before is not None and server_after is not None:
        per_event = (server_after - server_before) / args.events * 1e6
        print(f"  PostgreSQL CPU: {per_event:.1f} µs/event")
    print("  verification:", "OK (every event once)" if ok else f"MISMATCH: want {expected}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
