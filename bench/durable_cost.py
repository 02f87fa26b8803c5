"""What the durable queue costs per ``track()`` call, next to the in-memory queue.

Usage: ``.venv/bin/python bench/durable_cost.py [--calls N]``. Starts the benchmark sink
(bench/sink.py) on 127.0.0.1, then for each queue (memory, ``queue_path``, ``queue_path``
with ``queue_fsync=True``) times N calls of the benchmark's event on the calling thread,
with the worker delivering, and prints p50 and p99 in microseconds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import make_event  # noqa: E402

import tracklane  # noqa: E402


def percentile(values: List[int], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] / 1000


def measure(url: str, calls: int, **options: Any) -> Dict[str, float]:
    client = tracklane.Client("bench-key", host=url, max_queue_size=calls + 1000, **options)
    perf = time.perf_counter_ns
    samples: List[int] = []
    for i in range(calls):
        event = make_event(i)
        started = perf()
        client.track(event["user_id"], event["event"], event["properties"])
        samples.append(perf() - started)
        if i % 100 == 99:
            time.sleep(0.001)  # bursts of 100, like the latency benchmark
    client.flush(timeout=60)
    client.shutdown()
    samples.sort()
    return {"p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    sink = subprocess.Popen(
        [sys.executable, str(HERE / "sink.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            rows = [
                ("in memory", measure(url, args.calls)),
                ("queue_path", measure(url, args.calls, queue_path=f"{tmp}/a.db")),
                (
                    "queue_path + queue_fsync",
                    measure(
                        url, max(1000, args.calls // 10), queue_path=f"{tmp}/b.db", queue_fsync=True
                    ),
                ),
            ]
        print("| queue | track() p50 (µs) | track() p99 (µs) |")
        print("|---|---:|---:|")
        for name, row in rows:
            print(f"| {name} | {row['p50_us']:.1f} | {row['p99_us']:.1f} |")
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
