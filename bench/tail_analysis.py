"""Where the slow ``track()`` calls of the tight loop spend their time (issue 14).

Usage::

    python bench/tail_analysis.py [--lib tracklane|segment] [--switch-ms 5] [--repeat 3]

Runs the tight loop of bench/tail_cases.py in this process against a local sink
(bench/sink.py) and, for every call, records besides its duration:

* the calling thread's voluntary and involuntary context switches during the call
  (``getrusage(RUSAGE_THREAD)``): a voluntary switch inside ``track()`` is the caller
  waiting for the GIL (or handing it over), an involuntary one is the OS preempting
  the thread (another process wanted the CPU; on a busy machine this is most of them);
* whether a garbage collection ran during the call (``gc.callbacks``), and which
  generation;
* whether the call overlapped the worker's request to the sink (the transport's
  ``send``), and whether it was the call that completed a batch of the queue.

It then attributes every call slower than the p99 to the first cause that applies and
prints the table; the ratios are what docs/performance.md quotes. Counting switches
instead of timing them keeps the attribution meaningful on a busy machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
_src = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else BENCH.parent / "src"
sys.path.insert(0, str(_src))  # the tree measured: this one's, or --src

from adapters import get_adapter  # noqa: E402
from common import SinkControl  # noqa: E402
from tail_cases import MAX_QUEUE_SIZE, make_order  # noqa: E402


def start_sink() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "sink.py"), "--ppid", str(os.getpid())],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30.0)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"the sink did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def run_once(lib: str, url: str, n: int, warmup: int) -> Dict[str, Any]:
    sink = SinkControl(url)
    sink.reset()
    adapter = get_adapter(lib)
    adapter.make_client(url, at_defaults=True, queue_size=MAX_QUEUE_SIZE)
    sends: List[List[int]] = []
    transport = getattr(adapter.client, "_transport", None)
    if transport is not None:
        send = transport.send

        def timed_send(body: bytes, timeout: float) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return send(body, timeout)
            finally:
                sends.append([t0, time.perf_counter_ns()])

        transport.send = timed_send
    pipeline = getattr(adapter.client, "_pipeline", None)
    gcs: List[List[int]] = []
    gc_start = [0]

    def on_gc(phase: str, info: Dict[str, Any]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            gc_start[0] = now
        else:
            gcs.append([gc_start[0], now, int(info.get("generation", -1))])

    track = adapter.track
    for i in range(warmup):
        track(make_order(i))
    time.sleep(0.3)
    perf = time.perf_counter_ns
    usage = resource.getrusage
    who = resource.RUSAGE_THREAD
    starts = [0] * n
    durations = [0] * n
    vol = [0] * n
    invol = [0] * n
    fills = [False] * n
    gc.callbacks.append(on_gc)
    for k in range(n):
        ev = make_order(warmup + k)
        r0 = usage(who)
        t0 = perf()
        track(ev)
        t1 = perf()
        r1 = usage(who)
        starts[k] = t0
        durations[k] = t1 - t0
        vol[k] = r1.ru_nvcsw - r0.ru_nvcsw
        invol[k] = r1.ru_nivcsw - r0.ru_nivcsw
        if pipeline is not None:
            fills[k] = len(pipeline._queue) % 100 == 0
    gc.callbacks.remove(on_gc)
    during = int(sink.stats()["events"])
    adapter.flush(30.0)
    adapter.close(10.0)
    return attribute(starts, durations, vol, invol, fills, gcs, sends, during)


def _overlaps(t0: int, t1: int, spans: List[List[int]]) -> bool:
    return any(a < t1 and b > t0 for a, b, *_ in spans)


def attribute(
    starts: List[int],
    durations: List[int],
    vol: List[int],
    invol: List[int],
    fills: List[bool],
    gcs: List[List[int]],
    sends: List[List[int]],
    during: int,
) -> Dict[str, Any]:
    ordered = sorted(durations)
    n = len(ordered)
    p50 = ordered[n // 2]
    p99 = ordered[int(n * 0.99)]
    slow = [k for k in range(n) if durations[k] >= p99]
    causes: Dict[str, List[int]] = {}
    for k in slow:
        t0, t1 = starts[k], starts[k] + durations[k]
        if invol[k]:
            cause = "preempted by the OS (involuntary switch)"
        elif _overlaps(t0, t1, gcs):
            gens = sorted({g for a, b, g in gcs if a < t1 and b > t0})
            cause = f"garbage collection, generation {gens}"
        elif vol[k]:
            cause = "waited for the GIL (voluntary switch)"
            if fills[k]:
                cause += ", batch-completing call"
            elif _overlaps(t0, t1, sends):
                cause += ", during a request"
        else:
            cause = "none of these (caches, allocation)"
        causes.setdefault(cause, []).append(durations[k])
    return {
        "calls": n,
        "p50_us": p50 / 1000,
        "p99_us": p99 / 1000,
        "calls_with_voluntary_switch": sum(1 for v in vol if v),
        "calls_with_involuntary_switch": sum(1 for v in invol if v),
        "gc_runs": {g: sum(1 for *_, gen in gcs if gen == g) for g in (0, 1, 2)},
        "requests_during_loop": len(sends),
        "delivered_during_loop": during,
        "slow_calls_by_cause": {
            c: {"count": len(d), "median_us": statistics.median(d) / 1000}
            for c, d in sorted(causes.items(), key=lambda kv: -len(kv[1]))
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lib", default="tracklane")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--switch-ms", type=float, default=None, help="sys.setswitchinterval")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--src", default="", help="the tracklane source tree (default: this one's)")
    args = p.parse_args()
    if args.switch_ms is not None:
        sys.setswitchinterval(args.switch_ms / 1000)
    proc, url = start_sink()
    try:
        for _ in range(args.repeat):
            result = run_once(args.lib, url, args.n, args.warmup)
            switch_ms = sys.getswitchinterval() * 1000
            print(f"{args.lib} switch={switch_ms:g} ms load={os.getloadavg()[0]:.1f}")
            for key, value in result.items():
                if key == "slow_calls_by_cause":
                    for cause, agg in value.items():
                        count, median_us = agg["count"], agg["median_us"]
                        print(f"    {count:5d} slow calls, median {median_us:7.1f} µs: {cause}")
                else:
                    print(f"  {key}: {value}")
    finally:
        proc.terminate()
        proc.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
