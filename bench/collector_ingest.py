"""Sustained ingest rate of the local collector (``tracklane.collector``), and warehouse loads.

Starts the collector as a subprocess on a free loopback port (or in this process
with ``--in-thread``), runs several concurrent clients that each POST batches of
realistic events with distinct messageIds (in random order, as the UUIDs clients send;
``--growing-ids`` for ids that mostly grow, which the store's messageId index used to take
far more cheaply) for a bounded time and count, then
checks through ``GET /v1/events/count`` that every acknowledged event was stored.
It does so for each store in ``--stores``: SQLite (a file) and PostgreSQL (Debian's
server started in a temporary directory by ``tests/pg.py``, fsync and synchronous
commit on, so both stores make every acknowledged event durable).

The load generator is lean by default (``--client raw``): real senders are other machines,
while here the clients share the two cores with the collector, so each client thread writes
pre-built HTTP/1.1 requests (bodies built before the clock starts, a counter stamped into
their messageIds with one ``bytes.replace``) on one keep-alive socket and reads each answer
by hand, checking its status and its ``stored`` count as httpx's clients did. It spends
about 2 µs of CPU per event, httpx (``--client httpx``) 11-15. Both are reported, with
the collector's CPU per event for each of its processes (``--workers``).

With PostgreSQL available it then loads ``--warehouse-events`` stored-form events
into the ``postgres`` warehouse destination in batches of ``--warehouse-batch`` and
reports events/s, checking the row counts.

    python bench/collector_ingest.py --clients 4 --duration 10
    python bench/collector_ingest.py --batch-size 1-100   # part-filled batches, as clients flush
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import httpx
import orjson

URL_PREFIX = "tracklane collector listening on "
EVENTS = ("Order Completed", "Product Viewed", "Signed Up", "Checkout Started", "Search")


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def realistic_message(rng: random.Random, now: str) -> Dict[str, Any]:
    """One message like a web backend sends: mostly tracks, some identifies and pages."""
    user = f"user-{rng.randrange(50_000)}"
    context = {
        "library": {"name": "tracklane", "version": "0.1.0"},
        "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
        "locale": "en-US",
        "page": {"path": "/checkout", "url": "https://shop.example/checkout", "referrer": ""},
    }
    base = {
        "messageId": str(uuid.uuid4()),
        "userId": user,
        "timestamp": now,
        "context": context,
        "integrations": {"All": True},
    }
    kind = rng.random()
    if kind < 0.8:
        return {
            **base,
            "type": "track",
            "event": rng.choice(EVENTS),
            "properties": {
                "orderId": f"o-{rng.randrange(10**9)}",
                "total": round(rng.uniform(5, 500), 2),
                "currency": "EUR",
                "products": [
                    {"sku": f"sku-{rng.randrange(1000)}", "price": 19.99, "quantity": 1}
                    for _ in range(rng.randrange(1, 4))
                ],
            },
        }
    if kind < 0.9:
        traits = {"email": f"{user}@example.com", "plan": "pro", "logins": rng.randrange(100)}
        return {**base, "type": "identify", "traits": traits}
    return {**base, "type": "page", "name": "Checkout", "properties": {"path": "/checkout"}}


@dataclass
class ClientResult:
    """What one client thread sent and had acknowledged."""

    events: int = 0
    requests: int = 0
    failures: int = 0


_PLACE = b"@@@@@@@@"  # replaced by a per-request counter, so every messageId is unique
_TEMPLATES = 16


def batch_templates(
    rng: random.Random, client: int, batch_sizes: Tuple[int, int], random_ids: bool
) -> List[Tuple[bytes, int]]:
    """Request bodies built before the clock starts, each messageId with a placeholder, and
    how many messages each holds (from ``batch_sizes``, both ends included).

    Building realistic messages costs the load generator far more CPU than the collector
    spends storing them; on a 2-core machine the two would share the cores, so bodies are
    built up front and each request only stamps a counter into its messageIds. With
    ``random_ids`` (the command's default) the message's index leads and the stamp is random,
    so they come in random order, as the random UUIDs clients send do (tracklane's and
    Segment's libraries); otherwise the counter leads and they mostly grow. With a unique
    index on events, random ids cost the store twice as much; since schema 2 they cost about
    what growing ones do (docs/performance.md).
    """
    now = _iso(datetime.now(timezone.utc))
    templates = []
    for number in range(_TEMPLATES):
        batch = [realistic_message(rng, now) for _ in range(rng.randint(*batch_sizes))]
        for index, message in enumerate(batch):
            message["messageId"] = (
                f"{index:04x}-@@@@@@@@-{client:04x}-{number:04x}-bench"
                if random_ids
                else f"@@@@@@@@-{client:04x}-{number:04x}-{index:04x}-bench"
            )
        templates.append((orjson.dumps({"batch": batch, "sentAt": now}), len(batch)))
    return templates


def run_client(
    url: str,
    key: str,
    batch_sizes: Tuple[int, int],
    max_batches: int,
    duration: float,
    start: threading.Barrier,
    result: ClientResult,
    seed: int,
    random_ids: bool,
) -> None:
    """POST batches with httpx until the time or count bound; count acknowledged events."""
    rng = random.Random(seed)
    templates = batch_templates(rng, seed, batch_sizes, random_ids)
    with httpx.Client(base_url=url, auth=(key, ""), timeout=30) as http:
        start.wait(120)
        stop_at = time.monotonic() + duration
        while result.requests < max_batches and time.monotonic() < stop_at:
            counter = rng.getrandbits(32) if random_ids else result.requests // _TEMPLATES
            template, size = templates[result.requests % _TEMPLATES]
            body = template.replace(_PLACE, b"%08x" % counter)
            response = http.post(
                "/v1/batch", content=body, headers={"Content-Type": "application/json"}
            )
            result.requests += 1
            if response.status_code == 200 and response.json()["stored"] == size:
                result.events += size
            else:
                result.failures += 1


def run_raw_client(
    url: str,
    key: str,
    batch_sizes: Tuple[int, int],
    max_batches: int,
    duration: float,
    start: threading.Barrier,
    result: ClientResult,
    seed: int,
    random_ids: bool,
) -> None:
    """The same requests over one keep-alive socket, HTTP/1.1 written and read by hand.

    Real senders are other machines: on this one the load generator shares the two cores
    with the collector, and httpx spends about 11 µs of CPU per event (100-event
    batches), more than a quarter of what the collector spends. Here each request is one
    ``bytes.replace`` on a pre-built request and one ``sendall``; the answer is read up to
    its Content-Length and parsed like httpx's (status 200, ``stored`` equal to the batch).
    """
    rng = random.Random(seed)
    templates = batch_templates(rng, seed, batch_sizes, random_ids)
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    auth = base64.b64encode(f"{key}:".encode()).decode()
    requests = [
        (
            (
                f"POST /v1/batch HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("latin-1")
            + body,
            size,
        )
        for body, size in templates
    ]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        start.wait(120)
        stop_at = time.monotonic() + duration
        while result.requests < max_batches and time.monotonic() < stop_at:
            counter = rng.getrandbits(32) if random_ids else result.requests // _TEMPLATES
            request, size = requests[result.requests % _TEMPLATES]
            sock.sendall(request.replace(_PLACE, b"%08x" % counter))
            status, answer = _read_response(reader)
            result.requests += 1
            if status == 200 and orjson.loads(answer)["stored"] == size:
                result.events += size
            else:
                result.failures += 1


def _read_response(reader: Any) -> Tuple[int, bytes]:
    """Read one HTTP/1.1 response with a Content-Length: (status, body)."""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("the collector closed the connection")
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(status_line.split(None, 2)[1]), reader.read(length)


TESTS = Path(__file__).resolve().parents[1] / "tests"


def _src_path() -> str:
    import tracklane.collector

    return str(Path(tracklane.collector.__file__).resolve().parents[2])


def cpu_seconds(pid: int) -> Optional[float]:
    """CPU time (user + system) a process has used so far; ``None`` where /proc is missing.

    On a machine shared with other work, CPU time per event varies far less than the
    wall-clock rate, so both are reported.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> List[int]:
    """``pid`` and its child processes (the collector's ``--workers``), from /proc."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        children = {int(c) for t in tasks for c in (t / "children").read_text().split()}
    except OSError:
        return [pid]
    return [pid, *sorted(children)]


def _process_names(pids: List[int]) -> List[str]:
    """ "collector" for the server, "writer" for its SQLite writer process, "worker N" for its
    workers, other children by role."""
    names = ["collector"]
    for pid in pids[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            command = b""
        if b"resource_tracker" in command:
            names.append("multiprocessing's resource tracker")
        elif b"tracklane-writer" in command:
            names.append("writer")
        else:
            names.append(f"worker {sum(name.startswith('worker') for name in names) + 1}")
    return names


SERVER_PID: Dict[str, int] = {}  # url -> pid of a collector subprocess


def _await_writer_process(url: str, key: str) -> None:
    """Wait until a SQLite collector commits in its writer process (it starts in the
    background; until then the server process commits), so the clock times the usual path."""
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=url, auth=(key, ""), timeout=5) as http:
        while time.monotonic() < deadline:
            health = http.get("/health").json()
            if health.get("writer_process", 0) is not None:  # no key: a collector before it
                return
            time.sleep(0.02)
    raise RuntimeError("the collector's writer process did not start within 30 s")


@contextlib.contextmanager
def _subprocess_server(db: str, key: str, workers: Optional[int]) -> Iterator[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_src_path(), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "tracklane.collector", "--port", "0", "--db", str(db)]
    if workers is not None:
        command += ["--workers", str(workers)]
    proc = subprocess.Popen([*command, "--write-key", key], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(30):
                raise RuntimeError("the collector did not start within 30 s")
        line = proc.stdout.readline().decode().strip()
        if not line.startswith(URL_PREFIX):
            raise RuntimeError(f"unexpected collector output: {line!r}")
        url = line[len(URL_PREFIX) :]
        SERVER_PID[url] = proc.pid
        if not str(db).startswith("postgresql"):
            _await_writer_process(url, key)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def _thread_server(db: str, key: str, workers: Optional[int]) -> Iterator[str]:
    from tracklane.collector import serve_in_thread

    with serve_in_thread(db, write_keys=[key], workers=workers or 0) as server:
        yield server.url


CPU_USED: Dict[str, float] = {}
PERF_COUNTS: Dict[str, float] = {}  # perf stat's counts for the collector's processes
_PERF_EVENTS = ("instructions", "context-switches")


def _perf_stat(pids: List[int]) -> Optional[subprocess.Popen[str]]:
    """Start ``perf stat`` on the collector's processes (``--perf``); None without perf."""
    command = ["perf", "stat", "-x", ",", "-e", ",".join(_PERF_EVENTS)]
    try:
        return subprocess.Popen(
            [*command, "-p", ",".join(map(str, pids))],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
    except OSError as exc:
        print(f"  perf stat unavailable: {exc}")
        return None


def _perf_counts(perf: subprocess.Popen[str]) -> Dict[str, float]:
    """Stop ``perf stat`` and parse its CSV lines (count,unit,event,...)."""
    perf.send_signal(signal.SIGINT)
    _, err = perf.communicate(timeout=10)
    counts: Dict[str, float] = {}
    for line in err.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in _PERF_EVENTS:
            with contextlib.suppress(ValueError):
                counts[fields[2]] = float(fields[0])
    return counts


def _measure(url: str, key: str, args: argparse.Namespace) -> Tuple[int, int, int, float, int]:
    """Run the clients; return (events acknowledged, requests, failures, seconds, stored)."""
    results = [ClientResult() for _ in range(args.clients)]
    start = threading.Barrier(args.clients + 1)
    threads = [
        threading.Thread(
            target=run_client if args.client == "httpx" else run_raw_client,
            args=(
                url,
                key,
                args.batch_size,
                args.max_batches,
                args.duration,
                start,
                r,
                i,
                args.random_ids,
            ),
            daemon=True,
        )
        for i, r in enumerate(results)
    ]
    for thread in threads:
        thread.start()
    pid = SERVER_PID.get(url)
    pids = process_tree(pid) if pid is not None else []
    cpu_before = [cpu_seconds(p) for p in pids]
    perf = _perf_stat(pids) if args.perf and pids else None
    start.wait(120)
    began = time.monotonic()
    client_cpu_before = time.process_time()
    for thread in threads:
        thread.join(args.duration + 60)
    elapsed = time.monotonic() - began
    cpu_after = [cpu_seconds(p) for p in pids]
    PERF_COUNTS.clear()
    if perf is not None:
        PERF_COUNTS.update(_perf_counts(perf))
    CPU_USED.clear()
    CPU_USED["clients"] = time.process_time() - client_cpu_before
    names = _process_names(pids)
    for name, before, after in zip(names, cpu_before, cpu_after):
        if before is not None and after is not None:
            CPU_USED[name] = after - before
    with httpx.Client(base_url=url, auth=(key, ""), timeout=30) as http:
        stored = http.get("/v1/events/count").json()["count"]
    sent = sum(r.events for r in results)
    requests = sum(r.requests for r in results)
    failures = sum(r.failures for r in results)
    return sent, requests, failures, elapsed, int(stored)


@contextlib.contextmanager
def _postgres() -> Iterator[Optional[Any]]:
    """A durable PostgreSQL server from tests/pg.py, or None (with a note) where missing."""
    sys.path.insert(0, str(TESTS))
    from pg import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer(durable=True)
    except PostgresUnavailable as exc:
        print(f"PostgreSQL skipped: {exc}")
        yield None
        return
    with server:
        yield server


def _ingest(store: str, location: str, args: argparse.Namespace) -> bool:
    """Measure and print the ingest rate into one store; return whether counts matched."""
    key = "bench-key"
    start_server: Callable[[str, str], Any] = (
        _thread_server if args.in_thread else _subprocess_server
    )
    with start_server(location, key, args.workers) as url:
        sent, requests, failures, elapsed, stored = _measure(url, key, args)
    mode = "in-thread" if args.in_thread else "subprocess"
    if args.workers is not None:
        mode += f", --workers {args.workers}"
    ids = ", random messageIds as UUIDs" if args.random_ids else ", growing messageIds"
    print(
        f"collector ingest into {store} ({mode}, {args.clients} clients,"
        f" batches of {_sizes_text(args.batch_size)}{ids})"
    )
    print(f"  requests: {requests} ({failures} failed) in {elapsed:.2f} s")
    if requests:
        # Each client waits for its answer before sending again, so the rate is at most
        # clients x batch / round trip: with few clients, the durable commit's latency bounds it.
        round_trip = elapsed * args.clients / requests * 1e3
        print(f"  round trip: {round_trip:.1f} ms per request (mean; one in flight per client)")
    print(f"  events acknowledged: {sent}, stored (GET /v1/events/count): {stored}")
    print(f"  sustained ingest: {sent / elapsed:,.0f} events/s")
    collector = [name for name in CPU_USED if name != "clients"]
    if collector and sent:
        per_event = sum(CPU_USED[name] for name in collector) / sent * 1e6
        parts = ", ".join(f"{name} {CPU_USED[name] / sent * 1e6:.1f}" for name in collector)
        print(
            f"  collector CPU: {per_event:.1f} µs/event ({parts}; "
            f"{1e6 / per_event:,.0f} events/s per fully used core)"
        )
    if PERF_COUNTS and sent:
        counted = []
        if "instructions" in PERF_COUNTS:  # no hardware counters in most virtual machines
            counted.append(f"{PERF_COUNTS['instructions'] / sent:,.0f} instructions/event")
        if "context-switches" in PERF_COUNTS:
            switches = PERF_COUNTS["context-switches"] / max(requests, 1)
            counted.append(f"{switches:.1f} context switches/request")
        print(f"  collector (perf stat): {', '.join(counted) or 'nothing counted'}")
    if sent:
        print(
            f"  load generator CPU ({args.client} clients): "
            f"{CPU_USED['clients'] / sent * 1e6:.1f} µs/event"
        )
    ok = failures == 0 and stored == sent and sent > 0
    print("  verification:", "OK" if ok else "MISMATCH")
    return ok


def stored_form(rng: random.Random, now: str) -> Dict[str, Any]:
    """A realistic message as the collector stores and serves it (with its server times)."""
    message = realistic_message(rng, now)
    message.pop("integrations", None)
    message.update(receivedAt=now, originalTimestamp=now, sentAt=now)
    return message


def _warehouse(dsn: str, args: argparse.Namespace) -> bool:
    """Load events into the warehouse destination; print events/s; return whether counts match."""
    import psycopg

    from tracklane.collector.destinations.warehouse import PostgresWarehouse

    rng = random.Random(7)
    now = _iso(datetime.now(timezone.utc))
    events = [stored_form(rng, now) for _ in range(args.warehouse_events)]
    warehouse = PostgresWarehouse(dsn)
    try:
        began = time.monotonic()
        new = 0
        for offset in range(0, len(events), args.warehouse_batch):
            new += warehouse.load("bench", events[offset : offset + args.warehouse_batch]).new
        elapsed = time.monotonic() - began
    finally:
        warehouse.close()
    with psycopg.connect(dsn) as conn:
        loaded = sum(
            int(conn.execute(f"SELECT count(*) FROM bench.{table}").fetchone()[0])  # type: ignore[index]
            for table in ("tracks", "identifies", "pages")
        )
    print(f"warehouse load (postgres destination, batches of {args.warehouse_batch})")
    print(f"  events: {len(events)} in {elapsed:.2f} s, rows in tracks+identifies+pages: {loaded}")
    print(f"  load rate: {len(events) / elapsed:,.0f} events/s")
    ok = new == loaded == len(events)
    print("  verification:", "OK" if ok else "MISMATCH")
    return ok


def _batch_sizes(text: str) -> Tuple[int, int]:
    """``--batch-size``: N or MIN-MAX, from 1 to 500 (500 of these messages stay under the
    500 KB batch limit)."""
    low, _, high = text.partition("-")
    try:
        sizes = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not N or MIN-MAX: {text!r}") from None
    if not 1 <= sizes[0] <= sizes[1] <= 500:
        raise argparse.ArgumentTypeError(f"sizes from 1 to 500, the smaller first: {text!r}")
    return sizes


def _sizes_text(sizes: Tuple[int, int]) -> str:
    return str(sizes[0]) if sizes[0] == sizes[1] else f"{sizes[0]}-{sizes[1]}"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark and print the sustained ingest and warehouse load rates."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument(
        "--batch-size",
        type=_batch_sizes,
        default=(100, 100),
        help="events per request: N, or MIN-MAX for sizes drawn at random (clients flush"
        " part-filled batches; each size is its own INSERT statement's length)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    parser.add_argument("--max-batches", type=int, default=5_000, help="per client")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: pre-built requests on a keep-alive socket (default); httpx: httpx.Client",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="the collector's --workers (default: the collector's own default)",
    )
    parser.add_argument("--in-thread", action="store_true", help="serve in this process")
    parser.add_argument(
        "--perf",
        action="store_true",
        help="also count the collector's instructions and context switches (perf stat)",
    )
    parser.add_argument(
        "--growing-ids",
        action="store_true",
        help="messageIds that mostly grow, each landing at the end of the store's messageId"
        " index (default: random, as the UUIDs clients send)",
    )
    parser.add_argument(
        "--random-ids",
        action="store_true",
        help="messageIds in random order, as UUIDs (the default; kept so that earlier commands"
        " still run)",
    )
    parser.add_argument(
        "--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument("--warehouse-events", type=int, default=50_000, help="0 to skip")
    parser.add_argument("--warehouse-batch", type=int, default=500, help="events per load")
    args = parser.parse_args(argv)
    if args.growing_ids and args.random_ids:
        parser.error("--growing-ids and --random-ids exclude each other")
    args.random_ids = not args.growing_ids
    stores = [store.strip() for store in args.stores.split(",") if store.strip()]
    unknown = set(stores) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"--stores: unknown store {sorted(unknown)[0]!r}")

    ok = True
    if "sqlite" in stores:
        with tempfile.TemporaryDirectory(prefix="tracklane-bench-") as tmp:
            ok = _ingest("SQLite", str(Path(tmp) / "events.db"), args) and ok
    if "postgresql" in stores or args.warehouse_events > 0:
        with _postgres() as postgres:
            if postgres is not None and "postgresql" in stores:
                dsn = postgres.create_database("ingest")
                ok = _ingest("PostgreSQL", dsn, args) and ok
            if postgres is not None and args.warehouse_events > 0:
                ok = _warehouse(postgres.create_database("warehouse"), args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
