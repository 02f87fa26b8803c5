"""Where the slow requests of the existing handler case (case e) spend their time (issue 14).

Usage::

    python bench/tail_handler_analysis.py [--repeat 3] [--seconds 6] [--steps] [--src TREE]
    python bench/tail_handler_analysis.py --case g [--repeat 3]   # the paced handler, case g

Runs case e of bench/run.py in this process: the main thread paced at 1,000 requests/s,
each request ~50 µs of pure Python (``work()``), building the event (``make_event``) and
one ``track()``; tracklane with the benchmark's settings (batches of 100, upload interval
0.5 s, a queue of 200,000) delivering to the local sink. Each repeat runs the same loop
without analytics first (no client in the process yet) and then with tracklane, so both
see the same machine state. For every request it records:

* its wall time, and the part spent in ``track()``;
* the thread's CPU time over the request (``time.thread_time_ns``): wall minus CPU is
  time the thread did not run (waiting for the GIL, or preempted);
* its voluntary and involuntary context switches (``getrusage(RUSAGE_THREAD)``);
* the garbage collections during it (``gc.callbacks``);
* whether its ``track()`` completed a batch (the queue held ``batch_size - 1`` before),
  and whether the worker was napping then (no wake-up call needed);
* the worker's stretches (bench/tail_paced_analysis.py's ``WorkerClock``): wake-up to the
  socket write and answer to the next wait hold the GIL; write to answer does not.

``--case g`` runs case g of bench/tail_cases.py the same way instead: a thread paced at
1,500 requests/s for 6,000 requests, ~34 µs of work and one ``track()`` of the 11-property
order, the client at its defaults with a queue of 250,000. It also reports the worker's
GIL-holding stretches per batch and the sink process's CPU per batch (``/proc``).

It prints, for the baseline and for tracklane, the p50 and p99 and how the requests at or
above the p99 divide by cause, with how much of their time is in ``track()`` and how much
of it the thread was not running. ``--steps`` then runs the loop once more with
``track()``'s steps done one by one and timed (``time_steps``).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
_src = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else BENCH.parent / "src"
sys.path.insert(0, str(_src))  # the tree measured: this one's, or --src

from adapters import get_adapter  # noqa: E402
from common import SinkControl, make_event  # noqa: E402
from tail_analysis import start_sink  # noqa: E402
from tail_cases import MAX_QUEUE_SIZE, WORK_TARGET_US, make_order  # noqa: E402
from tail_paced_analysis import WorkerClock, stretch_summary  # noqa: E402
from worker import scenario_calibrate, work  # noqa: E402

import tracklane  # noqa: E402  (from the tree measured)

RATE = 1000.0
WORK_US = 50.0
# case g (bench/tail_cases.py): rate, work, event
CASES: Dict[str, tuple[float, float, Callable[[int], Dict[str, Any]]]] = {
    "e": (RATE, WORK_US, make_event),
    "g": (1500.0, WORK_TARGET_US, make_order),
}


class GcCount:
    """How many collections have started, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.count = 0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: Dict[str, Any]) -> None:
        if phase == "start":
            self.count += 1

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


def run_loop(
    requests: int,
    iters: int,
    track: Optional[Callable[..., Any]],
    pipeline: Any,
    case: str = "e",
) -> Dict[str, List[int]]:
    """Case e's (or g's) loop on this thread; per-request records."""
    rate, _, make = CASES[case]
    n = requests
    rec: Dict[str, List[int]] = {
        k: [0] * n
        for k in (
            "start",
            "wall",
            "track",
            "cpu",
            "vol",
            "invol",
            "minflt",
            "gc",
            "completes",
            "napping",
        )
    }
    gcs = GcCount()
    perf = time.perf_counter_ns
    cpu = time.thread_time_ns
    usage = resource.getrusage
    who = resource.RUSAGE_THREAD
    batch_size = pipeline._batch_size if pipeline is not None else 0
    interval = int(1e9 / rate)
    warm = int(0.3 * rate)
    start = perf() + 1_000_000
    for i in range(warm + n):
        scheduled = start + i * interval
        now = perf()
        if scheduled > now:
            time.sleep((scheduled - now) / 1e9)
        g0 = gcs.count
        r0 = usage(who)
        c0 = cpu()
        t0 = perf()
        work(iters)
        ev = make(i)
        completes = napping = 0
        ta = perf()
        if track is not None:
            completes = int(len(pipeline._queue) == batch_size - 1)
            napping = int(pipeline._napping)
            track(ev)
        t1 = perf()
        c1 = cpu()
        r1 = usage(who)
        if i >= warm:
            k = i - warm
            rec["start"][k] = t0
            rec["wall"][k] = t1 - t0
            rec["track"][k] = t1 - ta
            rec["cpu"][k] = c1 - c0
            rec["vol"][k] = r1.ru_nvcsw - r0.ru_nvcsw
            rec["invol"][k] = r1.ru_nivcsw - r0.ru_nivcsw
            rec["minflt"][k] = r1.ru_minflt - r0.ru_minflt
            rec["gc"][k] = gcs.count - g0
            rec["completes"][k] = completes
            rec["napping"][k] = napping
    gcs.close()
    return rec


def describe(rec: Dict[str, List[int]], spans: List[tuple[int, int, str, int]]) -> Dict[str, Any]:
    """p50/p99 and the causes of the requests at or above the p99."""
    n = len(rec["wall"])
    wall = rec["wall"]
    ordered = sorted(wall)
    p50, p99 = ordered[n // 2], ordered[int(n * 0.99)]
    slow = [k for k in range(n) if wall[k] >= p99]
    gil = [(a, b) for a, b, kind, _ in spans if kind != "I/O (no GIL)"]
    io = [(a, b + 500_000) for a, b, kind, _ in spans if kind == "I/O (no GIL)"]

    def overlaps(k: int, windows: List[tuple[int, int]]) -> bool:
        t0, t1 = rec["start"][k], rec["start"][k] + wall[k]
        return any(a < t1 and b > t0 for a, b in windows)

    causes: Dict[str, List[int]] = {}
    for k in slow:
        if rec["gc"][k]:
            cause = "a garbage collection"
        elif rec["minflt"][k]:
            cause = "page faults (memory the thread touched for the first time)"
        elif rec["completes"][k] and not rec["napping"][k]:
            cause = "track() completed a batch and woke the worker"
        elif rec["completes"][k]:
            cause = "track() completed a batch (worker napping, no wake-up)"
        elif overlaps(k, gil):
            cause = "overlapped a worker stretch holding the GIL"
        elif rec["vol"][k]:
            cause = "waited (voluntary switch), no worker stretch"
        elif rec["invol"][k]:
            cause = "preempted by the OS (involuntary switch)"
        elif overlaps(k, io):
            cause = "ran while the worker wrote and the sink parsed (+0.5 ms)"
        else:
            cause = "none of these"
        causes.setdefault(cause, []).append(k)

    def us(values: List[int]) -> str:
        return f"{statistics.median(values) / 1000:.0f}" if values else "-"

    out: Dict[str, Any] = {
        "p50_us": p50 / 1000,
        "p99_us": p99 / 1000,
        "track_p50_us": sorted(rec["track"])[n // 2] / 1000,
        "track_p99_us": sorted(rec["track"])[int(n * 0.99)] / 1000,
        "slow": len(slow),
        "slow_not_running_median_us": us([wall[k] - rec["cpu"][k] for k in slow]),
        "slow_track_median_us": us([rec["track"][k] for k in slow]),
        "slow_cpu_median_us": us([rec["cpu"][k] for k in slow]),
        "all_cpu_median_us": us(rec["cpu"]),
        "batch_completing_calls": sum(rec["completes"]),
        "gc_during_requests": sum(1 for g in rec["gc"] if g),
        "requests_with_page_faults": sum(1 for f in rec["minflt"] if f),
        "slow_page_faults_median": us([1000 * rec["minflt"][k] for k in slow]),
        "slow_with_involuntary_switch": sum(1 for k in slow if rec["invol"][k]),
        "slow_with_voluntary_switch": sum(1 for k in slow if rec["vol"][k]),
    }
    if spans:
        for kind in ("build", "settle"):
            summary = stretch_summary(spans, kind)
            if summary:
                out[f"worker_{kind}_stretch_us"] = f"holding the GIL: {summary}"

        def gil_overlap(k: int) -> int:
            t0, t1 = rec["start"][k], rec["start"][k] + wall[k]
            return sum(max(0, min(b, t1) - max(a, t0)) for a, b in gil)

        # A worker turn (build, write, the sink's parse, settle) may leave the caches cold
        # for the requests just after it: the share of requests starting within 2 ms of one.
        after = [(b, b + 2_000_000) for a, b, k, _ in spans if k == "settle"]
        out["slow_within_2ms_after_worker_turn"] = sum(1 for k in slow if overlaps(k, after))
        out["all_within_2ms_after_worker_turn"] = sum(1 for k in range(n) if overlaps(k, after))
        out["slow_overlapping_worker_gil_stretch"] = sum(1 for k in slow if gil_overlap(k))
        out["all_overlapping_worker_gil_stretch"] = sum(1 for k in range(n) if gil_overlap(k))
        out["all_overlapping_worker_io"] = sum(1 for k in range(n) if overlaps(k, io))
        out["slow_overlapping_worker_io"] = sum(1 for k in slow if overlaps(k, io))
    out["causes"] = {
        cause: (
            f"{len(ks)} requests: wall {us([wall[k] for k in ks])} µs, track() "
            f"{us([rec['track'][k] for k in ks])}, CPU {us([rec['cpu'][k] for k in ks])}, "
            f"page faults {us([1000 * rec['minflt'][k] for k in ks])}"
        )
        for cause, ks in sorted(causes.items(), key=lambda kv: -len(kv[1]))
    }
    return out


def time_steps(url: str, requests: int, iters: int) -> Dict[str, str]:
    """Case e's loop with ``track()``'s common path done step by step, each step timed.

    The same steps as ``BaseClient.track`` (inline common call) and ``_enqueue``: the scope
    check, the timestamp, the message id, the message dict, the orjson encode, the
    exact-size copy and ``Pipeline.put``; p50 and p99 of each.
    """
    import orjson

    from tracklane._context import current_scope
    from tracklane._encode import ORJSON_OPTIONS
    from tracklane.messages import LIBRARY, new_message_id, now_timestamp

    SinkControl(url).reset()
    adapter = get_adapter("tracklane")
    adapter.make_client(url)
    client = adapter.client
    put, default = client._pipeline.put, client._default
    names = ("scope", "timestamp", "message id", "dict", "encode", "copy", "put", "whole call")
    rec: Dict[str, List[int]] = {k: [] for k in names}
    perf = time.perf_counter_ns
    warm = int(0.3 * RATE)
    start = perf() + 1_000_000
    for i in range(warm + requests):
        scheduled = start + i * int(1e9 / RATE)
        now = perf()
        if scheduled > now:
            time.sleep((scheduled - now) / 1e9)
        work(iters)
        ev = make_event(i)
        t0 = perf()
        current_scope()
        t1 = perf()
        stamp = now_timestamp()
        t2 = perf()
        mid = new_message_id()
        t3 = perf()
        message = {
            "type": "track",
            "event": ev["event"],
            "anonymousId": None,
            "properties": ev["properties"],
            "userId": ev["user_id"],
            "context": {"library": LIBRARY},
            "integrations": {},
            "timestamp": stamp,
            "messageId": mid,
        }
        t4 = perf()
        data = orjson.dumps(message, default=default, option=ORJSON_OPTIONS)
        t5 = perf()
        data = bytes(memoryview(data))
        t6 = perf()
        put(data)
        t7 = perf()
        if i >= warm:
            marks = (t0, t1, t2, t3, t4, t5, t6, t7)
            for k, name in enumerate(names[:-1]):
                rec[name].append(marks[k + 1] - marks[k])
            rec["whole call"].append(t7 - t0)
    adapter.flush(10.0)
    adapter.close(5.0)
    out = {}
    for name, values in rec.items():
        values.sort()
        n = len(values)
        out[name] = f"p50 {values[n // 2] / 1000:.2f} µs, p99 {values[int(n * 0.99)] / 1000:.2f} µs"
    return out


def process_cpu_ns(pid: int) -> int:
    """User + system CPU time of process ``pid`` (``/proc/PID/stat``), in ns."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def show(label: str, result: Dict[str, Any]) -> None:
    print(f"  {label}:")
    for key, value in result.items():
        if isinstance(value, dict):
            for cause, text in value.items():
                print(f"      {text}: {cause}")
        else:
            print(f"    {key}: {value}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per run")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--src", default="", help="the tracklane source tree (default: this one's)")
    p.add_argument("--work-iters", type=int, default=0, help="0: calibrate to ~50 µs")
    p.add_argument("--steps", action="store_true", help="also time track()'s steps one by one")
    p.add_argument("--case", choices=sorted(CASES), default="e", help="e (default) or g")
    args = p.parse_args()
    rate, work_us, _ = CASES[args.case]
    iters = args.work_iters or int(
        scenario_calibrate(argparse.Namespace(target_us=work_us))["work_iters"]
    )
    requests = int(args.seconds * rate)

    def in_thread(*loop_args: Any) -> Dict[str, List[int]]:
        """Case g serves from a thread, as bench/tail_cases.py does; case e from main."""
        if args.case == "e":
            return run_loop(*loop_args, case=args.case)
        box: List[Dict[str, List[int]]] = []
        thread = threading.Thread(target=lambda: box.append(run_loop(*loop_args, case="g")))
        thread.start()
        thread.join()
        return box[0]

    proc, url = start_sink()
    try:
        for _ in range(args.repeat):
            print(
                f"case {args.case} load={os.getloadavg()[0]:.1f} iters={iters} "
                f"requests={requests} tracklane from {Path(tracklane.__file__).parent}"
            )
            show("no analytics", describe(in_thread(requests, iters, None, None), []))
            SinkControl(url).reset()
            adapter = get_adapter("tracklane")
            if args.case == "g":
                adapter.make_client(url, at_defaults=True, queue_size=MAX_QUEUE_SIZE)
            else:
                adapter.make_client(url)
            clock = WorkerClock(adapter.client)
            sink_cpu = process_cpu_ns(proc.pid)
            rec = in_thread(requests, iters, adapter.track, adapter.client._pipeline)
            sink_cpu = process_cpu_ns(proc.pid) - sink_cpu
            adapter.flush(10.0)
            adapter.close(5.0)
            clock.restore()
            result = describe(rec, clock.stretches())
            batches = max(1, sum(rec["completes"]))
            result["sink_cpu_per_batch_us"] = round(sink_cpu / batches / 1000)
            wakeups = sum(1 for kind, *_ in clock.marks if kind == "woke")
            result["worker_wakeups_per_batch"] = round(wakeups / batches, 2)
            show("tracklane", result)
            if args.steps:
                show("track() step by step", time_steps(url, requests, iters))
    finally:
        proc.terminate()
        proc.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
