"""Where the slow requests of the paced handler (case g) spend their time (issue 14).

Usage::

    python bench/tail_paced_analysis.py [--switch-ms 5] [--repeat 3] [--requests 6000]

Runs case g of bench/tail_cases.py in this process (tracklane at its defaults, a queue of
250,000, the local sink) and records, besides every request's start and duration:

* the request thread's voluntary and involuntary context switches during the request
  (``getrusage(RUSAGE_THREAD)``): voluntary is waiting for the GIL, involuntary the OS
  preempting the thread;
* the worker's stretches that hold the GIL: from its wake-up (the return from its
  ``Condition`` wait) to the socket write, and from the answer's arrival to its next wait,
  timed with ``perf_counter_ns`` by wrapping the worker's steps.

It prints the worker's stretches (median, p90, max) and counts the requests slower than
the p99 that overlapped a stretch, with how much of the stretch they overlapped.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
_src = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else BENCH.parent / "src"
sys.path.insert(0, str(_src))  # the tree measured: this one's, or --src

from adapters import get_adapter  # noqa: E402
from common import SinkControl  # noqa: E402
from tail_analysis import start_sink  # noqa: E402
from tail_cases import MAX_QUEUE_SIZE, WORK_TARGET_US, make_order, work  # noqa: E402
from worker import scenario_calibrate  # noqa: E402


class WorkerClock:
    """Timestamps of the worker's steps, from wrappers around its methods."""

    def __init__(self, client: Any) -> None:
        self.marks: List[tuple[str, int, int]] = []
        pipeline = client._pipeline
        conn_cls = type(client._transport)
        marks = self.marks
        perf = time.perf_counter_ns
        cpu = time.thread_time_ns

        def mark(item: tuple[str, int]) -> None:
            marks.append((item[0], item[1], cpu()))

        sleep = pipeline._sleep

        def timed_sleep(longest: float, size: int) -> None:
            mark(("wait", perf()))
            sleep(longest, size)
            mark(("woke", perf()))

        pipeline._sleep = timed_sleep
        from tracklane import _http

        orig_send = _http.Connection._send
        orig_read = _http.Connection._read

        def timed_conn_send(conn: Any, data: bytes, deadline: float) -> None:
            mark(("write", perf()))
            orig_send(conn, data, deadline)
            mark(("written", perf()))

        def timed_read(conn: Any, deadline: float, head_only: bool = False) -> Any:
            response = orig_read(conn, deadline, head_only)
            mark(("answered", perf()))
            return response

        _http.Connection._send = timed_conn_send  # type: ignore[method-assign]
        _http.Connection._read = timed_read  # type: ignore[method-assign]
        self._restore = (_http, orig_send, orig_read)
        del conn_cls

    def restore(self) -> None:
        _http, send, read = self._restore
        _http.Connection._send = send
        _http.Connection._read = read

    def stretches(self) -> List[tuple[int, int, str, int]]:
        """(start, end, kind, cpu ns): wake-up to write ("build"), answer to next wait
        ("settle"), and the worker thread's CPU time over the stretch."""
        out: List[tuple[int, int, str, int]] = []
        last_woke = last_answer = last_write = None
        for kind, t, c in self.marks:
            if kind == "woke":
                last_woke = (t, c)
            elif kind == "write":
                last_write = (t, c)
                if last_woke is not None:
                    out.append((last_woke[0], t, "build", c - last_woke[1]))
                    last_woke = None
            elif kind == "answered":
                last_answer = (t, c)
                if last_write is not None:
                    out.append((last_write[0], t, "I/O (no GIL)", c - last_write[1]))
                    last_write = None
            elif kind == "wait" and last_answer is not None:
                out.append((last_answer[0], t, "settle", c - last_answer[1]))
                last_answer = None
        return out


def stretch_summary(spans: List[Any], kind: str) -> str:
    """The worker's ``kind`` stretches (wall and CPU, µs): count, median, p90, max; "" if none.

    ``spans`` holds ``(start_ns, end_ns, kind, cpu_ns)`` as :class:`WorkerClock` records them.
    """
    walls = sorted((b - a) / 1000 for a, b, k, _ in spans if k == kind)
    cpus = sorted(c / 1000 for _, _, k, c in spans if k == kind)
    if not walls:
        return ""
    return (
        f"n={len(walls)} wall median {statistics.median(walls):.0f} "
        f"p90 {walls[int(len(walls) * 0.9)]:.0f} max {walls[-1]:.0f}; "
        f"CPU median {statistics.median(cpus):.0f} "
        f"p90 {cpus[int(len(cpus) * 0.9)]:.0f} max {cpus[-1]:.0f}"
    )


def run_once(url: str, requests: int, rate: float, iters: int) -> Dict[str, Any]:
    sink = SinkControl(url)
    sink.reset()
    adapter = get_adapter("tracklane")
    adapter.make_client(url, at_defaults=True, queue_size=MAX_QUEUE_SIZE)
    clock = WorkerClock(adapter.client)
    track = adapter.track
    n = requests
    warm = int(0.3 * rate)
    starts = [0] * n
    durations = [0] * n
    vol = [0] * n
    invol = [0] * n
    late = [0] * n

    def serve() -> None:
        perf = time.perf_counter_ns
        usage = resource.getrusage
        who = resource.RUSAGE_THREAD
        interval = int(1e9 / rate)
        start = perf() + 1_000_000
        for i in range(warm + n):
            scheduled = start + i * interval
            now = perf()
            if scheduled > now:
                time.sleep((scheduled - now) / 1e9)
            r0 = usage(who)
            t0 = perf()
            work(iters)
            track(make_order(i))
            t1 = perf()
            r1 = usage(who)
            if i >= warm:
                k = i - warm
                starts[k] = t0
                durations[k] = t1 - t0
                vol[k] = r1.ru_nvcsw - r0.ru_nvcsw
                invol[k] = r1.ru_nivcsw - r0.ru_nivcsw
                late[k] = t0 - scheduled

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    adapter.flush(10.0)
    adapter.close(5.0)
    clock.restore()
    spans = clock.stretches()
    ordered = sorted(durations)
    p50, p99 = ordered[n // 2], ordered[int(n * 0.99)]
    slow = [k for k in range(n) if durations[k] >= p99]
    by_cause: Dict[str, List[float]] = {}
    for k in slow:
        t0, t1 = starts[k], starts[k] + durations[k]
        hit = [(a, b, kind) for a, b, kind, _ in spans if a < t1 and b > t0]
        if hit:
            kinds = "+".join(sorted({kind for *_, kind in hit}))
            cause = f"overlaps the worker's {kinds} stretch"
        elif invol[k]:
            cause = "no worker stretch; preempted by the OS"
        elif vol[k]:
            cause = "no worker stretch; waited (voluntary switch)"
        else:
            cause = "none of these"
        by_cause.setdefault(cause, []).append((t1 - t0) / 1000)
    out: Dict[str, Any] = {"p50_us": p50 / 1000, "p99_us": p99 / 1000, "slow": len(slow)}
    for kind in ("build", "settle", "I/O (no GIL)"):
        summary = stretch_summary(spans, kind)
        if summary:
            out[f"{kind}_stretch_us"] = summary
    fast_overlap = sum(
        1
        for k in range(n)
        if durations[k] < p99
        and any(a < starts[k] + durations[k] and b > starts[k] for a, b, *_ in spans)
    )
    out["requests_under_p99_overlapping_a_stretch"] = fast_overlap
    io = [(a, b) for a, b, kind, _ in spans if kind == "I/O (no GIL)"]
    near = [(a, b + 500_000) for a, b in io]  # the answer and the sink's parse just after

    def share(ks: List[int], windows: List[tuple[int, int]]) -> str:
        hits = sum(
            1 for k in ks if any(a < starts[k] + durations[k] and b > starts[k] for a, b in windows)
        )
        return f"{hits}/{len(ks)} ({100 * hits / max(1, len(ks)):.1f} %)"

    everyone = list(range(n))
    out["overlap_worker_io_all"] = share(everyone, io)
    out["overlap_worker_io_slow"] = share(slow, io)
    out["overlap_worker_io+0.5ms_all"] = share(everyone, near)
    out["overlap_worker_io+0.5ms_slow"] = share(slow, near)
    # A request that wakes while the worker holds the GIL starts late: that wait is before
    # t0, so it is not in the request's duration (the case g metric), only in its lateness.
    lates = sorted(late)
    gil_spans = [(a, b) for a, b, kind, _ in spans if kind != "I/O (no GIL)"]
    woke_in = [k for k in range(n) if any(a < starts[k] - late[k] < b for a, b in gil_spans)]
    out["start_lateness_us"] = (
        f"p50 {lates[n // 2] / 1000:.0f} p99 {lates[int(n * 0.99)] / 1000:.0f}; "
        f"{len(woke_in)} requests were due inside a worker GIL stretch, their lateness median "
        f"{statistics.median([late[k] / 1000 for k in woke_in]) if woke_in else 0:.0f} µs, "
        f"their duration median "
        f"{statistics.median([durations[k] / 1000 for k in woke_in]) if woke_in else 0:.0f} µs"
    )
    out["slow_by_cause"] = {
        c: f"{len(v)} requests, median {statistics.median(v):.0f} µs"
        for c, v in sorted(by_cause.items(), key=lambda kv: -len(kv[1]))
    }
    out["slow_with_involuntary_switch"] = sum(1 for k in slow if invol[k])
    out["slow_with_voluntary_switch"] = sum(1 for k in slow if vol[k])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=6000)
    p.add_argument("--rate", type=float, default=1500.0)
    p.add_argument("--switch-ms", type=float, default=None, help="sys.setswitchinterval")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--src", default="", help="the tracklane source tree (default: this one's)")
    p.add_argument("--work-iters", type=int, default=0, help="0: calibrate to ~34 µs")
    args = p.parse_args()
    if args.switch_ms is not None:
        sys.setswitchinterval(args.switch_ms / 1000)
    iters = args.work_iters or int(
        scenario_calibrate(argparse.Namespace(target_us=WORK_TARGET_US))["work_iters"]
    )
    proc, url = start_sink()
    try:
        for _ in range(args.repeat):
            result = run_once(url, args.requests, args.rate, iters)
            print(
                f"switch={sys.getswitchinterval() * 1000:g} ms load={os.getloadavg()[0]:.1f} "
                f"iters={iters} tracklane from {Path(sys.modules['tracklane'].__file__).parent}"
            )
            for key, value in result.items():
                if isinstance(value, dict):
                    for cause, text in value.items():
                        print(f"    {text}: {cause}")
                else:
                    print(f"  {key}: {value}")
    finally:
        proc.terminate()
        proc.wait(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
