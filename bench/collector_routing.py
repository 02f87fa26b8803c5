"""Routed rate of the collector: stored events delivered to a webhook, per second.

Starts a webhook receiver on 127.0.0.1 that holds its first request, then a collector
subprocess routing to it (``--config``), posts ``--events`` events (acknowledged, so
durable), releases the receiver and times how long the outbox takes to deliver them all.
Every messageId must arrive. ``--db postgresql`` routes from the PostgreSQL store instead
(a durable throw-away server from tests/pg.py, or the ``postgresql://`` URL given), through
the PostgreSQL outbox; ``--collectors 2`` runs two collectors on it sharing the work.

The receiver is part of what is measured, so its own CPU is printed too. It answers with
``disable_nagle_algorithm``: the stdlib handler writes the status line and headers, then the
body, in two sends, and with Nagle on the second waited for the collector's delayed ACK
(about 40 ms per request). Until 2026-11-30 that stall, not the collector, bounded this
benchmark (7,788 events/s on main with it, 16,000 with the receiver fixed, same collector).

    python bench/collector_routing.py --events 200000
    python bench/collector_routing.py --events 50000 --db postgresql --collectors 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, List, Optional, Set, Tuple

import httpx
import orjson
from collector_ingest import (
    URL_PREFIX,
    _iso,
    _postgres,
    _src_path,
    cpu_seconds,
    realistic_message,
)
from collector_warehouse import _server_cpu


class Receiver:
    """Counts the messages of 2xx-answered POSTs; the first request waits for ``release``."""

    def __init__(self) -> None:
        self.ids: Set[str] = set()
        self.received = 0
        self.requests = 0
        self.release = threading.Event()
        self.done = threading.Event()
        self.expected = 0
        self.finished_at = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: see above

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.release.wait(600)
                batch = orjson.loads(body)["batch"]
                with receiver._lock:
                    receiver.requests += 1
                    receiver.received += len(batch)
                    receiver.ids.update(m["messageId"] for m in batch)
                    if len(receiver.ids) >= receiver.expected and not receiver.done.is_set():
                        receiver.finished_at = time.monotonic()
                        receiver.done.set()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@contextlib.contextmanager
def _database(choice: str, tmp: str) -> Iterator[Tuple[Optional[str], Optional[Path]]]:
    """The ``--db`` location (a SQLite file, a fresh PostgreSQL database, or the URL given)
    and, for the PostgreSQL server this script started, its data directory."""
    if choice == "sqlite":
        yield str(Path(tmp) / "events.db"), None
    elif choice == "postgresql":
        with _postgres() as server:
            if server is None:
                yield None, None
            else:
                yield server.create_database("routing"), server.data_dir
    else:
        yield choice, None


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print the routed rate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=100, help="webhook batch_size")
    parser.add_argument("--concurrency", type=int, default=4, help="webhook concurrency")
    parser.add_argument(
        "--db", default="sqlite", help="sqlite (default), postgresql, or a postgresql:// URL"
    )
    parser.add_argument(
        "--collectors", type=int, default=1, help="collectors on the store (PostgreSQL only)"
    )
    args = parser.parse_args(argv)
    if args.collectors > 1 and args.db == "sqlite":
        parser.error("--collectors above 1 needs --db postgresql")

    receiver = Receiver()
    receiver.expected = args.events
    rng = random.Random(3)
    now = _iso(datetime.now(timezone.utc))
    with (
        tempfile.TemporaryDirectory(prefix="tracklane-route-") as tmp,
        _database(args.db, tmp) as (location, data_dir),
    ):
        if location is None:
            return 0  # PostgreSQL is not installed here (said above)
        config = Path(tmp) / "tracklane.toml"
        config.write_text(
            '[[sources]]\nname = "bench"\nwrite_keys = ["bench-key"]\n\n'
            f'[[destinations]]\nname = "Hooks"\ntype = "webhook"\nurl = "{receiver.url}"\n'
            f"batch_size = {args.batch_size}\nconcurrency = {args.concurrency}\n"
            "timeout = 600\n"  # the receiver holds its first requests until the events are in
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_src_path(), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "tracklane.collector", "--port", "0"]
        command += ["--db", location, "--config", str(config)]
        procs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
            for _ in range(args.collectors)
        ]
        try:
            urls = []
            for proc in procs:
                assert proc.stdout is not None
                with selectors.DefaultSelector() as selector:
                    selector.register(proc.stdout, selectors.EVENT_READ)
                    if not selector.select(30):
                        raise RuntimeError("the collector did not start within 30 s")
                urls.append(proc.stdout.readline().decode().strip()[len(URL_PREFIX) :])
            template = [realistic_message(rng, now) for _ in range(500)]
            clients = [
                httpx.Client(base_url=url, auth=("bench-key", ""), timeout=60) for url in urls
            ]
            for number, start in enumerate(range(0, args.events, 500)):
                batch = [{**m, "messageId": f"r-{start + i}"} for i, m in enumerate(template)][
                    : args.events - start
                ]
                http = clients[number % len(clients)]
                response = http.post("/v1/batch", content=orjson.dumps({"batch": batch}))
                if response.status_code != 200 or response.json()["stored"] != len(batch):
                    raise RuntimeError(f"ingest failed: {response.text[:300]}")
            for http in clients:
                http.close()
            cpu_before = [cpu_seconds(proc.pid) for proc in procs]
            server_before = None if data_dir is None else _server_cpu(data_dir)
            own_before = time.process_time()
            began = time.monotonic()
            receiver.release.set()
            if not receiver.done.wait(600):
                raise RuntimeError(f"only {len(receiver.ids)} of {args.events} delivered")
            elapsed = receiver.finished_at - began
            own_used = time.process_time() - own_before
            cpu_after = [cpu_seconds(proc.pid) for proc in procs]
            server_after = None if data_dir is None else _server_cpu(data_dir)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
                if proc.stdout is not None:
                    proc.stdout.close()
            receiver.httpd.shutdown()
    store = "SQLite" if args.db == "sqlite" else f"PostgreSQL, {args.collectors} collector(s)"
    ok = receiver.ids == {f"r-{i}" for i in range(args.events)}
    print(
        f"collector routing to a webhook from {store} (batch_size {args.batch_size}, "
        f"concurrency {args.concurrency})"
    )
    print(
        f"  events: {args.events}, requests: {receiver.requests}, "
        f"received: {receiver.received} in {elapsed:.2f} s"
    )
    print(f"  routed: {args.events / elapsed:,.0f} events/s")
    if None not in cpu_before and None not in cpu_after:
        used = sum(a for a in cpu_after if a) - sum(b for b in cpu_before if b)
        per_event = used / args.events * 1e6
        print(
            f"  collector CPU: {per_event:.1f} µs/event "
            f"({1e6 / per_event:,.0f} events/s per fully used core)"
        )
    if server_before is not None and server_after is not None:
        per_event = (server_after - server_before) / args.events * 1e6
        print(f"  PostgreSQL server CPU: {per_event:.1f} µs/event")
    print(
        f"  receiver (this process) CPU: {own_used / args.events * 1e6:.1f} µs/event, "
        f"{own_used / elapsed:.0%} of one core"
    )
    print("  verification:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
