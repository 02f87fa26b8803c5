"""AsyncClient beside Client and segment-analytics-python, all called from an asyncio app.

Every library is used the way an async web app would use it: calls made on the event
loop, 100 per loop turn (a turn is a request handler's slice), while a ticker task
measures how late the loop wakes up. Each measurement runs in its own process against
the benchmark's sink (bench/sink.py on 127.0.0.1); rounds interleave the libraries and
the table gives medians over rounds, with ratios to Client and to segment.

    python bench/async_client.py              # 3 rounds (make bench runs it)
    python bench/async_client.py --quick      # 1 round, small counts

Figures: a. ``track()`` p50/p99 on the loop (20,000 calls in bursts of 100, 2 ms apart);
b. delivered events/s (100,000 events, first call to all received; also the share already
delivered when the app's last call returns); c. loop lag p99 while
b. runs (a 5 ms ticker; what every other coroutine of the app waits on top of its own work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from common import (  # noqa: E402
    MAX_QUEUE_SIZE,
    UPLOAD_INTERVAL,
    UPLOAD_SIZE,
    WRITE_KEY,
    SinkControl,
    coerce_event,
    make_event,
    summarize_ns,
)

LIBS = ("AsyncClient", "Client", "segment")


def make(lib: str, url: str) -> Any:
    settings = {
        "host": url,
        "max_queue_size": MAX_QUEUE_SIZE,
        "upload_size": UPLOAD_SIZE,
        "upload_interval": UPLOAD_INTERVAL,
    }
    if lib == "segment":
        from segment.analytics import Client as SegmentClient

        return SegmentClient(WRITE_KEY, **settings)
    import tracklane

    return getattr(tracklane, lib)(WRITE_KEY, **settings)


async def finish(lib: str, client: Any, timeout: float) -> None:
    if lib == "AsyncClient":
        await client.shutdown(timeout)
    elif lib == "Client":
        await asyncio.get_running_loop().run_in_executor(None, client.shutdown, timeout)
    else:
        await asyncio.get_running_loop().run_in_executor(None, client.shutdown)


async def ticker(stop: asyncio.Event, lags: List[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(0.005)
        lags.append(loop.time() - start - 0.005)


async def latency(lib: str, url: str, n: int) -> Dict[str, Any]:
    sink = SinkControl(url)
    sink.reset()
    client = make(lib, url)
    coerce = ("decimal",) if lib == "segment" else ()
    track = client.track
    perf = time.perf_counter_ns
    for i in range(500):
        track(user_id="w", event="Warm-up", properties={"i": i})
    await asyncio.sleep(0.2)
    samples: List[int] = []
    for start in range(0, n, 100):
        for i in range(start, start + 100):
            event = coerce_event(make_event(i), coerce)
            t0 = perf()
            track(user_id=event["user_id"], event=event["event"], properties=event["properties"])
            samples.append(perf() - t0)
        await asyncio.sleep(0.002)
    await finish(lib, client, 10)
    return summarize_ns(samples)


async def throughput(lib: str, url: str, n: int) -> Dict[str, Any]:
    sink = SinkControl(url)
    sink.reset()
    client = make(lib, url)
    coerce = ("decimal",) if lib == "segment" else ()
    stop = asyncio.Event()
    lags: List[float] = []
    tick = asyncio.create_task(ticker(stop, lags))
    track = client.track
    started = time.perf_counter()
    for start in range(0, n, 100):
        for i in range(start, start + 100):
            event = coerce_event(make_event(i), coerce)
            track(user_id=event["user_id"], event=event["event"], properties=event["properties"])
        await asyncio.sleep(0)  # the next request handler's turn
    calls_done = time.perf_counter()
    # How much was delivered while the app kept the loop busy (tracklane clients count it).
    during = client.stats().delivered if lib != "segment" else float("nan")
    loop = asyncio.get_running_loop()
    if lib == "AsyncClient":
        await client.flush(120)
    else:
        await loop.run_in_executor(None, client.flush)
    got = await loop.run_in_executor(None, sink.wait, n, 120.0)
    ended = time.perf_counter()
    wall = ended - started
    stop.set()
    await tick
    await finish(lib, client, 10)
    lags.sort()
    return {
        "delivered": got["events"],
        "events_per_s": got["events"] / wall,
        "delivered_during_calls_pct": 100.0 * during / n,
        "tail_after_calls_s": ended - calls_done,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000 if lags else float("nan"),
        "lag_max_ms": lags[-1] * 1000 if lags else float("nan"),
    }


def child(args: argparse.Namespace) -> None:
    scenario: Callable[[str, str, int], Any] = latency if args.scenario == "latency" else throughput
    result = asyncio.run(scenario(args.lib, args.url, args.n))
    print(json.dumps(result))


def run_child(lib: str, scenario: str, url: str, n: int) -> Dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            lib,
            "--scenario",
            scenario,
            "--url",
            url,
            "--n",
            str(n),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return {}
    result: Dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--child")
    p.add_argument("--scenario")
    p.add_argument("--url")
    p.add_argument("--n", type=int, default=0)
    args = p.parse_args()
    if args.child:
        args.lib = args.child
        child(args)
        return 0
    from run import Sink

    rounds = args.rounds or (1 if args.quick else 3)
    calls, events = (2_000, 10_000) if args.quick else (20_000, 100_000)
    sink = Sink(sys.executable, 1800)
    results: Dict[str, Dict[str, List[float]]] = {lib: {} for lib in LIBS}
    try:
        for r in range(rounds):
            order = LIBS[r % len(LIBS) :] + LIBS[: r % len(LIBS)]
            for lib in order:
                for scenario, n in (("latency", calls), ("throughput", events)):
                    doc = run_child(lib, scenario, sink.url, n)
                    for key, value in doc.items():
                        results[lib].setdefault(key, []).append(float(value))
                    sys.stderr.write(f"round {r + 1} {lib:11} {scenario:10} {doc}\n")
    finally:
        sink.stop()

    def med(lib: str, key: str) -> float:
        values = results[lib].get(key) or [float("nan")]
        return float(statistics.median(values))

    rows = [
        ("a. `track()` p50 on the loop (µs)", "p50_us", "{:.2f}"),
        ("a. `track()` p99 on the loop (µs)", "p99_us", "{:.1f}"),
        ("b. delivered events/s", "events_per_s", "{:,.0f}"),
        ("b. share delivered while the app calls (%)", "delivered_during_calls_pct", "{:.0f}"),
        ("c. loop lag p99 during b. (ms)", "lag_p99_ms", "{:.1f}"),
    ]
    print("| metric | AsyncClient | Client | segment | Async ÷ Client | Async ÷ segment |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, key, fmt in rows:
        a, c, s = med("AsyncClient", key), med("Client", key), med("segment", key)
        print(
            f"| {label} | {fmt.format(a)} | {fmt.format(c)} | {fmt.format(s)} "
            f"| {a / c:.2f}x | {a / s:.2f}x |"
        )
    print(f"\nMedians of {rounds} round(s); {calls:,} timed calls, {events:,} events delivered.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
