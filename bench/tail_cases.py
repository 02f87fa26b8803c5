"""The two tail cases of issue 14, as an independent benchmark measures them.

* ``tight_loop``: 2,000 warm-up calls, a 0.3 s pause, then 50,000 timed calls of
  ``track(user_id=..., event="Order Completed", properties=props)`` back to back, each
  with a fresh dict of 11 properties (strings, ints, a float, a bool, None, a list, a
  nested dict with an address, an aware datetime and two ``Decimal``; ~594 bytes as
  JSON), timed with ``perf_counter_ns`` around the call while the worker delivers.
* ``paced_handler``: a thread paced at 1,500 requests/s for 6,000 requests, each ~34 µs
  of pure Python plus one ``track()`` with such a dict; the p99 of the request's duration
  is compared with the same loop without analytics (``--lib none``).

Every client runs at its defaults except ``max_queue_size`` (250,000), delivering to the
loopback sink that answers 200 at once. ``bench/worker.py`` runs one measurement per
process; ``bench/run.py`` interleaves the libraries and reports ratios against the peers.
The existing handler case (e. in bench/run.py: ~50 µs of work, building the event and one
``track()``, 1,000 requests/s in the main thread) keeps its meaning but is measured as
soundly as case g since issue 14: 6,000 timed requests per run (its p99 is the 60th
slowest, not the 30th of 3,000), and each library's run next to its own no-analytics run
in the same round (``handler_schedule``), its increase the median over rounds of the
paired differences (``handler_overhead_paired``), not the difference of two medians.
``--dump PATH`` (tight loop) writes every call's start and duration plus the worker's
batch boundaries and the garbage collections, for the analysis in docs/performance.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional, Tuple

from common import coerce_event, summarize_ns

SCENARIOS = ("tight_loop", "paced_handler")
MAX_QUEUE_SIZE = 250_000
WORK_TARGET_US = 34.0

FULL_COUNTS = {"tight_calls": 50_000, "tight_warmup": 2_000, "paced_requests": 6_000}
QUICK_COUNTS = {"tight_calls": 5_000, "tight_warmup": 500, "paced_requests": 750}

_PLACED_AT = datetime(2024, 5, 17, 9, 30, 12, 345000, tzinfo=timezone.utc)


def make_order(i: int) -> Dict[str, Any]:
    """A fresh track call's arguments: 11 properties, ~594 bytes once encoded."""
    return {
        "user_id": f"user-{i % 5000}",
        "event": "Order Completed",
        "properties": {
            "order_id": f"ord-{i:08d}",
            "revenue": Decimal("129.99"),
            "tax": Decimal("24.70"),
            "currency": "EUR",
            "item_count": 3,
            "discount": 0.15,
            "first_order": i % 7 == 0,
            "coupon": None,
            "tags": ["gift", "express", "newsletter-signup"],
            "shipping": {
                "method": "express",
                "carrier": "DHL Parcel",
                "address": {
                    "street": "Rua Augusta 274",
                    "city": "Lisbon",
                    "country": "PT",
                    "postcode": "1100-048",
                },
            },
            "placed_at": _PLACED_AT,
        },
    }


# --------------------------------------------------------------------------- in the worker


class _Recorder:
    """Batch boundaries (the sink's answers, seen by the transport) and GC events."""

    def __init__(self) -> None:
        self.gc: List[List[float]] = []
        self.sends: List[List[float]] = []
        self._gc_start = 0

    def gc_callback(self, phase: str, info: Dict[str, Any]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._gc_start = now
        else:
            self.gc.append([self._gc_start, now, info.get("generation", -1)])

    def wrap_send(self, client: Any) -> None:
        transport = getattr(client, "_transport", None)
        if transport is None:
            return
        send = transport.send

        def timed_send(body: bytes, timeout: float) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return send(body, timeout)
            finally:
                self.sends.append([t0, time.perf_counter_ns()])

        transport.send = timed_send


def scenario_tight_loop(adapter: Any, sink: Any, args: argparse.Namespace) -> Dict[str, Any]:
    sink.reset()
    adapter.make_client(args.url, gzip=args.gzip, at_defaults=True, queue_size=MAX_QUEUE_SIZE)
    recorder: Optional[_Recorder] = None
    if args.dump:
        recorder = _Recorder()
        recorder.wrap_send(adapter.client)
    coerce = args.coerce
    track = adapter.track
    perf = time.perf_counter_ns
    for i in range(args.warmup):
        track(coerce_event(make_order(i), coerce))
    time.sleep(0.3)
    if recorder is not None:
        gc.callbacks.append(recorder.gc_callback)
    n = args.n
    starts: List[int] = [0] * n if recorder is not None else []
    samples: List[int] = [0] * n
    base = args.warmup
    t_start = perf()
    for k in range(n):
        ev = coerce_event(make_order(base + k), coerce)
        t0 = perf()
        track(ev)
        t1 = perf()
        samples[k] = t1 - t0
        if recorder is not None:
            starts[k] = t0
    elapsed_s = (perf() - t_start) / 1e9
    if recorder is not None:
        gc.callbacks.remove(recorder.gc_callback)
    during = int(sink.stats()["events"])
    adapter.flush(args.flush_timeout)
    got = sink.wait(base + n, 10.0)
    result: Dict[str, Any] = {
        **summarize_ns(samples),
        "loop_s": elapsed_s,
        "delivered_during_loop": during,
        "delivered": got["events"],
        "expected": base + n,
    }
    stats = adapter.stats()
    if stats is not None:
        result["client_stats"] = stats
    if recorder is not None:
        with open(args.dump, "w") as f:
            json.dump(
                {
                    "t0": t_start,
                    "starts": starts,
                    "durations": samples,
                    "gc": recorder.gc,
                    "sends": recorder.sends,
                },
                f,
            )
    adapter.close(10.0)
    return result


def work(iters: int) -> int:
    """Pure-Python CPU work standing in for a request handler's own logic."""
    acc = 0
    for k in range(iters):
        acc = (acc * 31 + k) & 0xFFFFFFFF
    return acc


def scenario_paced_handler(
    adapter: Optional[Any], sink: Any, args: argparse.Namespace
) -> Dict[str, Any]:
    """Requests paced at ``--rate`` in one thread; each is ``work()`` plus one track()."""
    sink.reset()
    coerce = args.coerce
    track: Optional[Callable[[Dict[str, Any]], None]] = None
    if adapter is not None:
        adapter.make_client(args.url, gzip=args.gzip, at_defaults=True, queue_size=MAX_QUEUE_SIZE)
        track = adapter.track
    iters = args.work_iters
    n = args.n
    durations: List[int] = []

    def serve() -> None:
        perf = time.perf_counter_ns
        interval_ns = int(1e9 / args.rate)
        warm = int(0.3 * args.rate)
        start = perf() + 1_000_000
        for i in range(warm + n):
            scheduled = start + i * interval_ns
            now = perf()
            if scheduled > now:
                time.sleep((scheduled - now) / 1e9)
            t0 = perf()
            work(iters)
            ev = coerce_event(make_order(i), coerce)
            if track is not None:
                track(ev)
            t1 = perf()
            if i >= warm:
                durations.append(t1 - t0)

    thread = threading.Thread(target=serve, name="paced-handler")
    t0 = time.perf_counter()
    thread.start()
    thread.join()
    elapsed = time.perf_counter() - t0
    svc = summarize_ns(durations)
    result: Dict[str, Any] = {
        "requests": len(durations),
        "rate_per_s": (len(durations) + int(0.3 * args.rate)) / elapsed,
        **svc,
    }
    if adapter is not None:
        adapter.flush(min(args.flush_timeout, 10.0))
        result["delivered"] = sink.stats()["events"]
        adapter.close(5.0)
    return result


# --------------------------------------------------------------------------- in run.py


def worker_args(scenario: str, counts: Dict[str, int], work_iters: int) -> List[str]:
    """The worker.py arguments for one measurement of ``scenario``."""
    if scenario == "tight_loop":
        return ["--n", str(counts["tight_calls"]), "--warmup", str(counts["tight_warmup"])]
    return [
        "--n",
        str(counts["paced_requests"]),
        "--rate",
        "1500",
        "--work-iters",
        str(work_iters),
    ]


def handler_overhead(raw: Dict[str, Dict[str, List[Dict[str, Any]]]], lib: str) -> Dict[str, Any]:
    """Median p50/p99 increase of ``lib``'s paced handler over the loop without analytics.

    Each round's run is paired with the same round's baseline (interleaved), then the
    median over rounds is taken.
    """
    import statistics

    mine = raw.get(lib, {}).get("paced_handler", [])
    base = raw.get("none", {}).get("paced_handler", [])
    out: Dict[str, Any] = {}
    for key in ("p50_us", "p99_us"):
        diffs = [m[key] - b[key] for m, b in zip(mine, base) if key in m and key in b]
        out[key.replace("_us", "_increase_us")] = statistics.median(diffs) if diffs else None
    return out


def handler_schedule(order: List[str], rnd: int) -> Tuple[List[str], List[str]]:
    """Case e's runs in round ``rnd``: each library next to its own no-analytics run.

    Returns the libraries to run, in order, and for each slot the library its run belongs
    to (a ``none`` run is the baseline of the library it is paired with). The pair's
    order alternates from library to library and from round to round, so neither side of
    a pair always comes first.
    """
    runs: List[str] = []
    pairs: List[str] = []
    for i, lib in enumerate(order):
        runs += ["none", lib] if (rnd + i) % 2 == 0 else [lib, "none"]
        pairs += [lib, lib]
    return runs, pairs


def handler_pairs(
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]], lib: str
) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """Case e's runs of ``lib``, each with the no-analytics run paired with it."""
    base = {
        (d.get("round"), d.get("paired_with")): d for d in raw.get("none", {}).get("handler", [])
    }
    return [
        (m, base[(m.get("round"), lib)])
        for m in raw.get(lib, {}).get("handler", [])
        if (m.get("round"), lib) in base
    ]


def handler_overhead_paired(
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]], lib: str
) -> Dict[str, Optional[float]]:
    """Case e's p50/p99 increase: each run minus its paired baseline, median over rounds."""
    import statistics

    pairs = handler_pairs(raw, lib)
    out: Dict[str, Optional[float]] = {}
    for key in ("p50_us", "p99_us"):
        diffs = [m[key] - b[key] for m, b in pairs if key in m and key in b]
        out[f"handler_{key.replace('_us', '_overhead_us')}"] = (
            statistics.median(diffs) if diffs else None
        )
    return out


METRIC_ROWS = (
    ("tight_p50_us", "f. tight loop: `track()` p50 (µs)", "tight_loop", "p50_us"),
    ("tight_p99_us", "f. tight loop: `track()` p99 (µs)", "tight_loop", "p99_us"),
    ("paced_p50_us", "g. paced handler 1,500/s: request p50 (µs)", "paced_handler", "p50_us"),
    ("paced_p99_us", "g. paced handler 1,500/s: request p99 (µs)", "paced_handler", "p99_us"),
)
INCREASE_ROWS = (
    ("paced_p99_increase_us", "g. paced handler: p99 increase over no analytics (µs)"),
    (
        "handler_p99_overhead_us",
        "e. handler 1,000/s (existing case): p99 increase over no analytics, paired (µs)",
    ),
)


def summarise(
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]],
    results: Dict[str, Dict[str, Optional[float]]],
    libs: List[str],
    peers: List[str],
) -> List[str]:
    """Add the tail figures to ``results`` (medians over rounds); Markdown rows with ratios."""
    import statistics

    for lib in libs:
        per = results.setdefault(lib, {})
        for key, _, scenario, field in METRIC_ROWS:
            vals = [float(d[field]) for d in raw.get(lib, {}).get(scenario, []) if field in d]
            per[key] = statistics.median(vals) if vals else None
        per["paced_p99_increase_us"] = handler_overhead(raw, lib)["p99_increase_us"]
    rows = ["| tail metric | " + " | ".join(libs + [f"tracklane ÷ {p}" for p in peers]) + " |"]
    rows.append("|---|" + "---:|" * (len(libs) + len(peers)))
    for key, label, *_ in (*METRIC_ROWS, *((k, lbl) for k, lbl in INCREASE_ROWS)):
        cells = [label]
        for lib in libs:
            value = results.get(lib, {}).get(key)
            cells.append("—" if value is None else f"{value:.1f}")
        mine = results.get("tracklane", {}).get(key)
        for peer in peers:
            theirs = results.get(peer, {}).get(key)
            ok = mine is not None and theirs is not None and theirs > 0
            cells.append(f"{mine / theirs:.2f}\u00d7" if ok else "—")  # type: ignore[operator]
        rows.append("| " + " | ".join(cells) + " |")
    paired = paired_increase_ratios(raw, peers)
    if paired:
        rows += ["", *paired]
    return rows


def paired_increase_ratios(
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]], peers: List[str]
) -> List[str]:
    """Row g's p99 increase ÷ each peer's, round by round (both paired with that round's
    baseline), as a line under the table.

    The table's ratio divides the medians over rounds; a p99 of 6,000 requests is set by
    60 of them, about one per batch, and moves by a factor of 2 to 4 between rounds, so
    the per-round ratios show how far one round can swing the verdict.
    """
    import statistics

    base = raw.get("none", {}).get("paced_handler", [])
    mine = raw.get("tracklane", {}).get("paced_handler", [])
    lines: List[str] = []
    for peer in peers:
        theirs = raw.get(peer, {}).get("paced_handler", [])
        ratios = []
        for m, t, b in zip(mine, theirs, base):
            if "p99_us" in m and "p99_us" in t and "p99_us" in b and t["p99_us"] > b["p99_us"]:
                ratios.append((m["p99_us"] - b["p99_us"]) / (t["p99_us"] - b["p99_us"]))
        if ratios:
            each = ", ".join(f"{r:.2f}\u00d7" for r in ratios)
            lines.append(
                f"- g. paced handler, p99 increase ÷ {peer}'s round by round: {each} "
                f"(median {statistics.median(ratios):.2f}\u00d7)."
            )
    for peer in peers:
        theirs_by_round = {
            m.get("round"): m["p99_us"] - b["p99_us"] for m, b in handler_pairs(raw, peer)
        }
        ratios = []
        left_out = 0
        for m, b in handler_pairs(raw, "tracklane"):
            theirs = theirs_by_round.get(m.get("round"))
            if theirs is not None and theirs > 0:
                ratios.append((m["p99_us"] - b["p99_us"]) / theirs)
            elif theirs is not None:
                left_out += 1  # the peer's p99 was not above its own baseline: no ratio
        if ratios:
            each = ", ".join(f"{r:.2f}\u00d7" for r in ratios)
            note = (
                f"; {left_out} round(s) left out, where {peer}'s p99 was not above its baseline"
                if left_out
                else ""
            )
            lines.append(
                f"- e. handler, p99 increase ÷ {peer}'s round by round (each over its own "
                f"paired baseline): {each} (median {statistics.median(ratios):.2f}\u00d7{note})."
            )
    return lines
