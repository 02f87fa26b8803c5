"""One measurement, in its own process: ``worker.py --lib LIB --scenario NAME ...``.

Prints one line ``RESULT {json}`` on stdout and exits by itself: a watchdog thread ends
the process (``os._exit``) at ``--deadline`` seconds whatever the library is doing, and
the process always leaves through ``os._exit`` so that no library's atexit hook (which
may join a worker thread stuck on the "never answer" sink) can keep it alive.

Scenarios:

* ``probe``: which of the event's types the library can send, and how they arrive.
* ``floor``: reference costs: ``deque.append``, ``orjson.dumps`` of the event,
  building the event, the timer itself.
* ``latency``: cost of one ``track()`` on the calling thread, worker running.
* ``throughput``: delivered events/s and process CPU seconds for N events, from the
  first call until the sink has counted all N (after ``flush()``).
* ``memory``: bytes per queued message with the sink not answering
  (``--memory-mode tracemalloc`` or ``rss``).
* ``handler``: a small request handler (~50 us of pure Python + one ``track()``)
  paced at ``--rate`` per second; ``--lib none`` runs it without analytics.
* ``sink_ceiling``: events/s the sink absorbs from pre-encoded batches (``--lib none``).
* ``calibrate``: the loop count that makes the handler's CPU work take ~50 us.
* ``tight_loop``, ``paced_handler``: the tail cases of bench/tail_cases.py.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import resource
import sys
import threading
import time
import traceback
from decimal import Decimal
from typing import Any, Callable, Optional

from adapters import Adapter, AdapterUnavailable, get_adapter
from common import UPLOAD_INTERVAL, SinkControl, coerce_event, make_event, summarize_ns
from tail_cases import SCENARIOS as TAIL_SCENARIOS
from tail_cases import scenario_paced_handler, scenario_tight_loop

_RESULT_LOCK = threading.Lock()
_RESULT_SENT = False


def emit(result: dict[str, Any], code: int = 0) -> None:
    """Print the result line once and leave the process immediately."""
    global _RESULT_SENT
    with _RESULT_LOCK:
        if not _RESULT_SENT:
            _RESULT_SENT = True
            sys.stdout.write("RESULT " + json.dumps(result, default=str) + "\n")
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def start_watchdog(seconds: float, context: dict[str, Any]) -> None:
    def fire() -> None:
        emit({**context, "error": f"hard deadline of {seconds:.0f}s reached"}, code=3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: peak RSS is the best we have
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def cpu_seconds() -> tuple[float, float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), usage.ru_utime, usage.ru_stime


def work(iters: int) -> int:
    """Pure-Python CPU work standing in for a request handler's own logic."""
    acc = 0
    for k in range(iters):
        acc = (acc * 31 + k) & 0xFFFFFFFF
    return acc


# --------------------------------------------------------------------------- scenarios


def scenario_probe(adapter: Adapter, sink: SinkControl, args: argparse.Namespace) -> dict[str, Any]:
    """Find the coercions the library needs and record how the event arrives."""
    adapter.make_client(args.url, gzip=args.gzip)
    attempts: list[dict[str, Any]] = []
    chosen: Optional[list[str]] = None
    sample: Any = None
    for coerce in ([], ["decimal"], ["datetime"], ["decimal", "datetime"]):
        sink.reset()
        attempt: dict[str, Any] = {"coerce": coerce}
        try:
            adapter.track(coerce_event(make_event(0), coerce))
            adapter.flush(5.0)
            got = sink.wait(1, 3.0)
            attempt["delivered"] = got["events"]
            attempt["paths"] = got["paths"]
            attempt["encodings"] = got["encodings"]
        except Exception as exc:
            attempt["error"] = f"{type(exc).__name__}: {exc}"
            attempt["delivered"] = 0
        attempts.append(attempt)
        if attempt["delivered"] >= 1:
            chosen = coerce
            sample = sink.sample()
            break
    props = (sample or {}).get("properties") if isinstance(sample, dict) else None
    received: dict[str, Any] = {}
    if isinstance(props, dict):
        for key in ("revenue", "placed_at", "shipping"):
            value = props.get(key)
            received[key] = {"type": type(value).__name__, "value": value}
    notes = []
    if chosen is None:
        notes.append("could not deliver the event in any form")
    else:
        if "decimal" in chosen:
            notes.append("Decimal rejected; sent as float")
        if "datetime" in chosen:
            notes.append("datetime rejected; sent as ISO-8601 string")
        rev = received.get("revenue", {})
        if not chosen or "decimal" not in chosen:
            notes.append(f"Decimal arrives as JSON {rev.get('type', '?')} ({rev.get('value')!r})")
    with_close(adapter, 5.0)
    return {
        "coerce": chosen,
        "attempts": attempts,
        "received": received,
        "sample": sample,
        "notes": notes,
    }


def with_close(adapter: Adapter, timeout: float) -> Optional[str]:
    try:
        adapter.close(timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def scenario_floor(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    perf = time.perf_counter_ns
    out: dict[str, Any] = {}

    timer_ns = []
    for _ in range(n):
        t0 = perf()
        t1 = perf()
        timer_ns.append(t1 - t0)
    out["timer"] = summarize_ns(timer_ns)

    build_ns = []
    for i in range(n):
        t0 = perf()
        make_event(i)
        t1 = perf()
        build_ns.append(t1 - t0)
    out["build_event"] = summarize_ns(build_ns)

    dq: collections.deque[Any] = collections.deque()
    append = dq.append
    deque_ns = []
    for i in range(n):
        ev = make_event(i)
        t0 = perf()
        append(ev)
        t1 = perf()
        deque_ns.append(t1 - t0)
    out["deque_append"] = summarize_ns(deque_ns)
    dq.clear()

    try:
        import orjson
    except ImportError:
        out["orjson_dumps"] = None
        out["orjson_error"] = "orjson is not installed"
        return out

    def default(obj: Any) -> Any:
        if isinstance(obj, Decimal):
            return float(obj)
        raise TypeError

    dumps = orjson.dumps
    orjson_ns = []
    size = 0
    for i in range(n):
        ev = make_event(i)
        t0 = perf()
        blob = dumps(ev, default=default)
        t1 = perf()
        orjson_ns.append(t1 - t0)
        size = len(blob)
    out["orjson_dumps"] = summarize_ns(orjson_ns)
    out["encoded_bytes"] = size
    out["encoded_object_bytes"] = sys.getsizeof(dumps(make_event(0), default=default))
    # Memory floors (tracemalloc): what keeping one message costs in its cheapest forms.
    m = min(n, 10_000)
    out["retained_bytes"] = {
        "event_dict": retained_per_item(m, make_event),
        "orjson_bytes": retained_per_item(m, lambda i: dumps(make_event(i), default=default)),
        "exact_size_bytes": retained_per_item(
            m, lambda i: bytes(memoryview(dumps(make_event(i), default=default)))
        ),
    }
    return out


def retained_per_item(n: int, build: Callable[[int], Any]) -> float:
    """Bytes still allocated per item when ``n`` results of ``build`` are kept."""
    import tracemalloc

    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.get_traced_memory()[0]
    keep = [build(i) for i in range(n)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    # The list itself holds one pointer per item; do not charge it to the item.
    return (after - before) / n - 8.0


def scenario_latency(
    adapter: Adapter, sink: SinkControl, args: argparse.Namespace
) -> dict[str, Any]:
    sink.reset()
    adapter.make_client(args.url, gzip=args.gzip)
    coerce = args.coerce
    track = adapter.track
    perf = time.perf_counter_ns
    for i in range(args.warmup):
        track(coerce_event(make_event(i), coerce))
    time.sleep(0.2)
    samples: list[int] = []
    burst = max(1, args.burst)
    i = args.warmup
    end = args.warmup + args.n
    t_start = time.perf_counter()
    while i < end:
        stop = min(end, i + burst)
        while i < stop:
            ev = coerce_event(make_event(i), coerce)
            t0 = perf()
            track(ev)
            t1 = perf()
            samples.append(t1 - t0)
            i += 1
        time.sleep(args.pause)
    elapsed = time.perf_counter() - t_start
    adapter.flush(args.flush_timeout)
    got = sink.wait(end, 10.0)
    result: dict[str, Any] = {
        **summarize_ns(samples),
        "offered_rate_per_s": args.n / elapsed,
        "delivered": got["events"],
        "expected": end,
    }
    stats = adapter.stats()
    if stats is not None:
        result["client_stats"] = stats
    close_error = with_close(adapter, 10.0)
    if close_error:
        result["close_error"] = close_error
    return result


def scenario_throughput(
    adapter: Adapter, sink: SinkControl, args: argparse.Namespace
) -> dict[str, Any]:
    n = args.n
    coerce = args.coerce
    sink.reset()
    adapter.make_client(args.url, gzip=args.gzip)
    track = adapter.track
    gc.collect()
    cpu0, user0, sys0 = cpu_seconds()
    t0 = time.perf_counter()
    for i in range(n):
        track(coerce_event(make_event(i), coerce))
    t_enqueued = time.perf_counter()
    adapter.flush(args.flush_timeout)
    t_flushed = time.perf_counter()
    remaining = max(1.0, args.deadline - (t_flushed - T_PROCESS_START) - 5.0)
    got = sink.wait(n, remaining)
    t_done = time.perf_counter()
    cpu1, user1, sys1 = cpu_seconds()
    delivered = int(got["events"])
    wall = t_done - t0
    result: dict[str, Any] = {
        "n": n,
        "delivered": delivered,
        "complete": delivered >= n,
        "wall_s": wall,
        "enqueue_s": t_enqueued - t0,
        "flush_s": t_flushed - t_enqueued,
        "events_per_s": delivered / wall if wall > 0 else float("nan"),
        "cpu_s": cpu1 - cpu0,
        "cpu_user_s": user1 - user0,
        "cpu_sys_s": sys1 - sys0,
        "cpu_s_per_100k": (cpu1 - cpu0) * 100_000 / max(1, delivered),
        "requests": got["requests"],
        "body_bytes": got["body_bytes"],
        "paths": got["paths"],
    }
    stats = adapter.stats()
    if stats is not None:
        result["client_stats"] = stats
    close_error = with_close(adapter, 10.0)
    if close_error:
        result["close_error"] = close_error
    return result


def scenario_memory(
    adapter: Adapter, sink: SinkControl, args: argparse.Namespace
) -> dict[str, Any]:
    import tracemalloc

    n = args.n
    coerce = args.coerce
    sink.reset(hang=True)
    # A long HTTP timeout so no library gives up on the hung request (and retries
    # or drops) while the queue fills.
    adapter.make_client(args.url, gzip=args.gzip, timeout=600.0)
    track = adapter.track
    # One event first: the worker takes it and blocks on the sink that never answers.
    track(coerce_event(make_event(0), coerce))
    deadline = time.monotonic() + UPLOAD_INTERVAL + 5.0
    hung = 0
    while time.monotonic() < deadline:
        hung = int(sink.stats()["hung"])
        if hung >= 1:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    gc.collect()
    mode = args.memory_mode
    if mode == "tracemalloc":
        tracemalloc.start(1)
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        track(coerce_event(make_event(i), coerce))
    enqueue_s = time.perf_counter() - t0
    time.sleep(UPLOAD_INTERVAL + 0.3)
    gc.collect()
    if mode == "tracemalloc":
        after, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    else:
        after, peak = rss_bytes(), 0
    sink_stats = sink.stats()
    result: dict[str, Any] = {
        "mode": mode,
        "n": n,
        "bytes_total": after - before,
        "bytes_per_message": (after - before) / n,
        "peak_bytes": peak - before if peak else None,
        "enqueue_s": enqueue_s,
        "requests_hung": sink_stats["hung"],
        "hung_before_fill": hung,
        "delivered_during_fill": sink_stats["events"],
    }
    stats = adapter.stats()
    if stats is not None:
        result["client_stats"] = stats
    # No close(): the worker thread is stuck on the sink by design; emit() exits.
    return result


def scenario_handler(
    adapter: Optional[Adapter], sink: SinkControl, args: argparse.Namespace
) -> dict[str, Any]:
    sink.reset()
    coerce = args.coerce
    track: Optional[Callable[[dict[str, Any]], None]] = None
    if adapter is not None:
        adapter.make_client(args.url, gzip=args.gzip)
        track = adapter.track
    iters = args.work_iters

    def handler(i: int) -> int:
        result = work(iters)
        ev = coerce_event(make_event(i), coerce)
        if track is not None:
            track(ev)
        return result

    perf = time.perf_counter_ns
    interval_ns = int(1e9 / args.rate)
    # Warm-up: 0.3 s at the same pace, not recorded.
    warm = int(0.3 * args.rate)
    total = warm + int(args.duration * args.rate)
    service: list[int] = []
    response: list[int] = []
    late = 0
    start = perf() + 1_000_000
    for i in range(total):
        scheduled = start + i * interval_ns
        now = perf()
        if scheduled > now:
            time.sleep((scheduled - now) / 1e9)
        else:
            late += 1
        t0 = perf()
        handler(i)
        t1 = perf()
        if i >= warm:
            service.append(t1 - t0)
            response.append(t1 - scheduled)
    elapsed_s = (perf() - start) / 1e9
    svc = summarize_ns(service)
    rsp = summarize_ns(response)
    result: dict[str, Any] = {
        "requests": len(service),
        "rate_per_s": total / elapsed_s if elapsed_s > 0 else float("nan"),
        "late": late,
        "service": svc,
        "response": rsp,
        "p50_us": svc["p50_us"],
        "p99_us": svc["p99_us"],
        "response_p50_us": rsp["p50_us"],
        "response_p99_us": rsp["p99_us"],
    }
    if adapter is not None:
        try:
            adapter.flush(min(args.flush_timeout, 10.0))
        except Exception as exc:
            result["flush_error"] = f"{type(exc).__name__}: {exc}"
        result["delivered"] = sink.stats()["events"]
        result["expected"] = total
        close_error = with_close(adapter, 5.0)
        if close_error:
            result["close_error"] = close_error
    return result


def scenario_sink_ceiling(sink: SinkControl, args: argparse.Namespace) -> dict[str, Any]:
    """The sink's own ceiling: pre-encoded 100-event batches posted back to back."""
    import http.client

    try:
        import orjson

        body = orjson.dumps({"batch": [make_event(i) for i in range(100)]}, default=str)
    except ImportError:
        body = json.dumps({"batch": [make_event(i) for i in range(100)]}, default=str).encode()
    sink.reset()
    conn = http.client.HTTPConnection(sink.host, sink.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    t0 = time.perf_counter()
    for _ in range(args.n):
        conn.request("POST", "/v1/batch", body=body, headers=headers)
        conn.getresponse().read()
    elapsed = time.perf_counter() - t0
    conn.close()
    counted = int(sink.stats()["events"])
    return {
        "requests": args.n,
        "events": counted,
        "events_per_s": counted / elapsed if elapsed > 0 else float("nan"),
        "requests_per_s": args.n / elapsed if elapsed > 0 else float("nan"),
    }


def scenario_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Loop count for ~``--target-us`` of work (median of several timings)."""
    target_ns = args.target_us * 1000.0
    iters = 200
    for _ in range(6):
        timings = []
        for _ in range(50):
            t0 = time.perf_counter_ns()
            work(iters)
            timings.append(time.perf_counter_ns() - t0)
        timings.sort()
        median = timings[len(timings) // 2]
        iters = max(1, int(iters * target_ns / max(1, median)))
    timings = []
    for _ in range(200):
        t0 = time.perf_counter_ns()
        work(iters)
        timings.append(time.perf_counter_ns() - t0)
    timings.sort()
    return {"work_iters": iters, "work_us_p50": timings[len(timings) // 2] / 1000.0}


# --------------------------------------------------------------------------- main

T_PROCESS_START = time.perf_counter()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lib", required=True, help="tracklane, segment, posthog, rudder, none")
    p.add_argument(
        "--scenario",
        required=True,
        choices=[
            "probe",
            "floor",
            "latency",
            "throughput",
            "memory",
            "handler",
            "calibrate",
            "sink_ceiling",
            *TAIL_SCENARIOS,
        ],
    )
    p.add_argument("--url", default="", help="sink URL, http://127.0.0.1:PORT")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--burst", type=int, default=100, help="latency: calls per burst")
    p.add_argument("--pause", type=float, default=0.002, help="latency: sleep between bursts")
    p.add_argument("--deadline", type=float, default=120.0, help="hard limit for this process")
    p.add_argument("--flush-timeout", type=float, default=60.0)
    p.add_argument("--coerce", default="", help="comma list: decimal,datetime")
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--memory-mode", choices=["tracemalloc", "rss"], default="tracemalloc")
    p.add_argument("--rate", type=float, default=1000.0, help="handler: requests per second")
    p.add_argument("--duration", type=float, default=3.0, help="handler: seconds measured")
    p.add_argument("--work-iters", type=int, default=1000, help="handler: work() loop count")
    p.add_argument("--target-us", type=float, default=50.0, help="calibrate: target work")
    p.add_argument("--dump", default="", help="tight_loop: write per-call timings here")
    args = p.parse_args(argv)
    args.coerce = [c for c in args.coerce.split(",") if c]
    return args


def main() -> None:
    args = parse_args()
    context = {"lib": args.lib, "scenario": args.scenario}
    start_watchdog(args.deadline, context)
    try:
        if args.scenario == "floor":
            emit({**context, "result": scenario_floor(args)})
        if args.scenario == "calibrate":
            emit({**context, "result": scenario_calibrate(args)})
        sink = SinkControl(args.url)
        if args.scenario == "sink_ceiling":
            emit({**context, "result": scenario_sink_ceiling(sink, args)})
        adapter: Optional[Adapter] = None
        if args.lib != "none":
            adapter = get_adapter(args.lib)
        info: dict[str, Any] = {}
        if adapter is not None:
            info["version"] = adapter.version()
        try:
            if args.scenario == "handler":
                result = scenario_handler(adapter, sink, args)
            elif args.scenario == "paced_handler":
                result = scenario_paced_handler(adapter, sink, args)
            elif adapter is None:
                raise SystemExit("--lib none only makes sense for the handler scenario")
            elif args.scenario == "probe":
                result = scenario_probe(adapter, sink, args)
            elif args.scenario == "latency":
                result = scenario_latency(adapter, sink, args)
            elif args.scenario == "throughput":
                result = scenario_throughput(adapter, sink, args)
            elif args.scenario == "tight_loop":
                result = scenario_tight_loop(adapter, sink, args)
            else:
                result = scenario_memory(adapter, sink, args)
        except AdapterUnavailable as exc:
            emit({**context, **info, "skipped": str(exc)})
        if adapter is not None:
            info["settings"] = {k: v for k, v in adapter.settings.items() if k != "host"}
            info["settings_ignored"] = adapter.settings_ignored
        if args.coerce:
            info["coerce"] = args.coerce
        emit({**context, **info, "result": result})
    except BaseException as exc:  # report, never hang
        emit(
            {
                **context,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8),
            },
            code=2,
        )


if __name__ == "__main__":
    main()
