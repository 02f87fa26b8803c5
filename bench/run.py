"""Benchmark tracklane against segment-analytics-python, posthog and rudder-sdk-python.

Usage (``make bench`` runs the first line)::

    python bench/run.py                      # full run: 3 rounds (e, g: 5), ~18-20 min
    python bench/run.py --quick              # smaller counts, 1 round, < 60 s
    python bench/run.py --only tracklane --only segment --metric throughput
    python bench/run.py --quick --only tracklane --no-peers-install   # current interpreter

Unless ``--no-peers-install`` is given, the peers are installed in their own virtual
environment (``.bench-venv``, created if missing) together with an editable install of
this repository, so that the four libraries are imported by one and the same
interpreter. Every measurement runs in its own process (bench/worker.py) against one
local HTTP sink (bench/sink.py, a separate process on 127.0.0.1); rounds interleave the
libraries, and the report gives medians over rounds plus tracklane/peer ratios.
The two tail cases of issue 14 (``tight_loop``, ``paced_handler``) live in
bench/tail_cases.py and get their own table.

Writes ``bench/results/latest.json`` (or ``--output``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import select
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import tail_cases  # noqa: E402
from common import (  # noqa: E402
    LIBRARIES,
    MAX_QUEUE_SIZE,
    PEERS,
    UPLOAD_INTERVAL,
    UPLOAD_SIZE,
)

PEER_PACKAGES = ["segment-analytics-python", "posthog", "rudder-sdk-python", "orjson", "httpx"]
PEER_IMPORTS = {
    "segment": "segment.analytics",
    "posthog": "posthog",
    "rudder": "rudderstack.analytics",
}
SCENARIOS = ("latency", "throughput", "memory", "handler", *tail_cases.SCENARIOS)
# The handler cases' p99 increase is set by 60 of 6,000 requests and swings by a factor of
# 2 to 4 from round to round on a quiet machine (docs/performance.md), so that one round
# could flip issue 14's verdict: a full run measures e and g in HANDLER_ROUNDS rounds, the
# rounds past --rounds for tracklane, segment (the reference) and the baselines only
# (about 50 s each). posthog's and rudder's figures stay medians of --rounds rounds.
HANDLER_SCENARIOS = ("handler", "paced_handler")
HANDLER_ROUNDS = 5
HANDLER_ROUND_LIBS = ("tracklane", "segment")
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def median(values: list[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(clean)) if clean else float("nan")


def worker_env() -> dict[str, str]:
    """The environment for measurement processes: no proxies, the working tree first."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("POSTHOG_")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- peers venv


def _run_checked(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def ensure_bench_venv(venv: Path) -> tuple[str, dict[str, Any]]:
    """Create/refresh the peers' venv; return its interpreter and what was checked."""
    info: dict[str, Any] = {"venv": str(venv)}
    python = venv / "bin" / "python"
    if not python.exists():
        proc = _run_checked([sys.executable, "-m", "venv", str(venv)], timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"could not create {venv}:\n{proc.stderr}")
    pyproject = (REPO / "pyproject.toml").read_bytes()
    want = hashlib.sha256(json.dumps(PEER_PACKAGES).encode() + b"\0" + pyproject).hexdigest()
    stamp = venv / ".bench-installed"
    stamp_doc: dict[str, Any] = {}
    if stamp.exists():
        try:
            stamp_doc = json.loads(stamp.read_text())
        except ValueError:
            stamp_doc = {}
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    if stamp_doc.get("hash") != want:
        proc = _run_checked([*pip, "install", "--quiet", *PEER_PACKAGES], timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"pip install of the peers failed:\n{proc.stdout}\n{proc.stderr}")
        stamp_doc = {"hash": want, "tracklane_installed": False}
    if not stamp_doc.get("tracklane_installed"):
        proc = _run_checked([*pip, "install", "--quiet", "-e", str(REPO)], timeout=600)
        stamp_doc["tracklane_installed"] = proc.returncode == 0
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            log(
                "warning: editable install of tracklane failed; the workers import it from "
                "src/ via PYTHONPATH instead. " + " | ".join(tail)
            )
    stamp.write_text(json.dumps(stamp_doc))
    info["tracklane_editable_install"] = stamp_doc["tracklane_installed"]
    # Do the peers coexist in one interpreter?
    imports = "; ".join(f"import {m}" for m in PEER_IMPORTS.values())
    proc = subprocess.run(
        [str(python), "-c", imports + "; import orjson, httpx"],
        capture_output=True,
        text=True,
        timeout=120,
        env=worker_env(),
        check=False,
    )
    info["peers_import_together"] = proc.returncode == 0
    if proc.returncode != 0:
        info["peers_import_error"] = proc.stderr.strip().splitlines()[-1:]
    proc = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120, check=False)
    info["pip_check"] = (proc.stdout or proc.stderr).strip()
    return str(python), info


# --------------------------------------------------------------------------- sink


class Sink:
    def __init__(self, python: str, max_seconds: float) -> None:
        self.proc = subprocess.Popen(
            [
                python,
                str(BENCH_DIR / "sink.py"),
                "--ppid",
                str(os.getpid()),
                "--max-seconds",
                str(int(max_seconds)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30.0)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.stop()
            raise SystemExit(f"the sink did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# --------------------------------------------------------------------------- workers


class Runner:
    def __init__(self, python: str, sink_url: str, args: argparse.Namespace) -> None:
        self.python = python
        self.sink_url = sink_url
        self.args = args
        self.env = worker_env()
        self.errors: list[dict[str, Any]] = []

    def run(
        self, lib: str, scenario: str, extra: list[str], deadline: float
    ) -> Optional[dict[str, Any]]:
        cmd = [
            self.python,
            str(BENCH_DIR / "worker.py"),
            "--lib",
            lib,
            "--scenario",
            scenario,
            "--url",
            self.sink_url,
            "--deadline",
            str(deadline),
            *extra,
        ]
        if self.args.gzip:
            cmd.append("--gzip")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=deadline + 20,
                env=self.env,
                cwd=str(REPO),
                check=False,
            )
            out, err = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = "killed after the hard deadline"
        took = time.monotonic() - t0
        doc: Optional[dict[str, Any]] = None
        for line in out.splitlines():
            if line.startswith("RESULT "):
                doc = json.loads(line[len("RESULT ") :])
        if doc is None:
            doc = {"lib": lib, "scenario": scenario, "error": "no result", "stderr": err[-2000:]}
        doc["took_s"] = took
        if "error" in doc:
            self.errors.append(doc)
            log(f"  ! {scenario} {lib}: {doc['error']}")
            if doc.get("traceback"):
                log("    " + doc["traceback"].replace("\n", "\n    "))
        return doc


# --------------------------------------------------------------------------- metrics


class Metric:
    def __init__(
        self,
        key: str,
        label: str,
        scenario: str,
        extract: Callable[[dict[str, Any]], Optional[float]],
        higher_is_better: bool = False,
        fmt: str = "us",
        in_table: bool = True,
    ) -> None:
        self.key = key
        self.label = label
        self.scenario = scenario
        self.extract = extract
        self.higher_is_better = higher_is_better
        self.fmt = fmt
        self.in_table = in_table


def _get(*path: str) -> Callable[[dict[str, Any]], Optional[float]]:
    def extract(doc: dict[str, Any]) -> Optional[float]:
        node: Any = doc
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return float(node) if isinstance(node, (int, float)) else None

    return extract


def _complete_only(
    inner: Callable[[dict[str, Any]], Optional[float]],
) -> Callable[[dict[str, Any]], Optional[float]]:
    def extract(doc: dict[str, Any]) -> Optional[float]:
        if not doc.get("complete", False):
            return None
        return inner(doc)

    return extract


METRICS = [
    Metric("track_p50_us", "a. `track()` p50, calling thread (µs)", "latency", _get("p50_us")),
    Metric("track_p99_us", "a. `track()` p99, calling thread (µs)", "latency", _get("p99_us")),
    Metric(
        "events_per_s",
        "b. delivered events/s, first call → all received (higher is better)",
        "throughput",
        _complete_only(_get("events_per_s")),
        higher_is_better=True,
        fmt="int",
    ),
    Metric(
        "cpu_s_per_100k",
        "d. process CPU s per 100k delivered",
        "throughput",
        _complete_only(_get("cpu_s_per_100k")),
        fmt="s",
    ),
    Metric(
        "mem_rss_bytes_per_msg",
        "c. memory per queued message, RSS delta (bytes)",
        "memory_rss",
        _get("bytes_per_message"),
        fmt="int",
    ),
    Metric(
        "mem_tracemalloc_bytes_per_msg",
        "c. memory per queued message, tracemalloc (bytes)",
        "memory_tracemalloc",
        _get("bytes_per_message"),
        fmt="int",
    ),
    Metric("handler_p50_us", "e. handler p50, service time (µs)", "handler", _get("p50_us")),
    Metric("handler_p99_us", "e. handler p99, service time (µs)", "handler", _get("p99_us")),
    Metric(
        "handler_response_p50_us",
        "e. handler p50, arrival → done (µs)",
        "handler",
        _get("response_p50_us"),
        in_table=False,
    ),
    Metric(
        "handler_response_p99_us",
        "e. handler p99, arrival → done (µs)",
        "handler",
        _get("response_p99_us"),
        in_table=False,
    ),
]


def progress(scenario: str, lib: str, doc: Optional[dict[str, Any]]) -> None:
    """One line per measurement on stderr while the benchmark runs."""
    res: dict[str, Any] = (doc or {}).get("result") or {}
    nan = float("nan")
    if scenario == "latency":
        text = f"p50 {res.get('p50_us', nan):8.2f} µs  p99 {res.get('p99_us', nan):8.2f} µs"
    elif scenario == "throughput":
        text = (
            f"{res.get('events_per_s', nan):9,.0f} ev/s  "
            f"cpu/100k {res.get('cpu_s_per_100k', nan):6.2f} s  "
            f"delivered {res.get('delivered')}/{res.get('n')}"
        )
    elif scenario.startswith("memory"):
        text = f"{res.get('bytes_per_message', nan):8.0f} B/msg"
    else:
        text = (
            f"p50 {res.get('p50_us', nan):8.1f} µs  p99 {res.get('p99_us', nan):8.1f} µs  "
            f"arrival→done p99 {res.get('response_p99_us', nan):8.1f} µs"
        )
    log(f"  {scenario:18s} {lib:9s} {text}")


def fmt_value(value: Optional[float], fmt: str) -> str:
    if value is None or math.isnan(value):
        return "—"
    if fmt == "int":
        return f"{value:,.0f}"
    if fmt == "s":
        return f"{value:.2f}"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt_ratio(value: Optional[float]) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.2f}\u00d7"


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="small counts, 1 round (smoke test)")
    p.add_argument(
        "--handler-rounds",
        type=int,
        default=None,
        help="rounds of the two handler cases (e, g) for tracklane, segment and their "
        "baselines (default 5, at least --rounds; 1 with --quick); the rounds past --rounds "
        "run only those cases",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="LIB",
        help="measure only this library (repeatable or comma list): " + ", ".join(LIBRARIES),
    )
    p.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these measurements (repeatable or comma list): " + ", ".join(SCENARIOS),
    )
    p.add_argument(
        "--no-peers-install",
        action="store_true",
        help="do not create/refresh .bench-venv; use this interpreter (peers it lacks are skipped)",
    )
    p.add_argument("--venv", type=Path, default=REPO / ".bench-venv", help="the peers' venv")
    p.add_argument(
        "--output", type=Path, default=BENCH_DIR / "results" / "latest.json", help="JSON path"
    )
    p.add_argument("--gzip", action="store_true", help="gzip request bodies in every library")
    p.add_argument(
        "--tracemalloc-rounds",
        type=int,
        default=1,
        help="rounds that also measure memory with tracemalloc (slow; default 1)",
    )
    p.add_argument(
        "--max-minutes", type=float, default=20.0, help="stop starting rounds after this"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if any measurement failed")
    args = p.parse_args(argv)

    only = [x for item in args.only for x in item.split(",") if x]
    for lib in only:
        if lib not in LIBRARIES:
            p.error(f"unknown library {lib!r}; choose from {', '.join(LIBRARIES)}")
    args.libs = [lib for lib in LIBRARIES if not only or lib in only]
    metrics = [x for item in args.metric for x in item.split(",") if x]
    for m in metrics:
        if m not in SCENARIOS:
            p.error(f"unknown measurement {m!r}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = [s for s in SCENARIOS if not metrics or s in metrics]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.handler_rounds is None:
        args.handler_rounds = 1 if args.quick else HANDLER_ROUNDS
    args.handler_rounds = max(args.handler_rounds, args.rounds)
    if args.quick:
        args.counts = {
            "latency_calls": 2_000,
            "latency_warmup": 200,
            "throughput_events": 10_000,
            "memory_messages": 10_000,
            "handler_seconds": 1.0,
            "floor_calls": 2_000,
            "sink_requests": 300,
            **tail_cases.QUICK_COUNTS,
        }
    else:
        args.counts = {
            "latency_calls": 20_000,
            "latency_warmup": 500,
            "throughput_events": 100_000,
            "memory_messages": 100_000,
            "handler_seconds": 6.0,
            "floor_calls": 20_000,
            "sink_requests": 2_000,
            **tail_cases.FULL_COUNTS,
        }
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_start = os.getloadavg()
    budget_end = time.monotonic() + args.max_minutes * 60

    if args.no_peers_install:
        python, env_info = sys.executable, {"venv": None, "note": "--no-peers-install"}
    else:
        python, env_info = ensure_bench_venv(args.venv)
    log(f"interpreter for all measurements: {python}")

    sink = Sink(python, max_seconds=args.max_minutes * 60 + 600)
    log(f"sink: {sink.url}")
    runner = Runner(python, sink.url, args)
    c = args.counts
    try:
        # Which libraries are usable, and which types do they accept?
        libraries: dict[str, dict[str, Any]] = {}
        active: list[str] = []
        for lib in args.libs:
            doc = runner.run(lib, "probe", [], deadline=60)
            entry: dict[str, Any] = {
                "available": False,
                "version": doc.get("version") if doc else None,
            }
            if doc and "result" in doc:
                res = doc["result"]
                entry.update(
                    available=res.get("coerce") is not None,
                    coerce=res.get("coerce") or [],
                    serialisation_notes=res.get("notes", []),
                    received=res.get("received"),
                    paths=(res.get("attempts") or [{}])[-1].get("paths"),
                    settings=doc.get("settings"),
                    settings_ignored=doc.get("settings_ignored"),
                )
                if not entry["available"]:
                    entry["skip_reason"] = "; ".join(res.get("notes", [])) or "probe failed"
            elif doc and "skipped" in doc:
                entry["skip_reason"] = doc["skipped"]
            else:
                entry["skip_reason"] = (doc or {}).get("error", "probe failed")
            libraries[lib] = entry
            if entry["available"]:
                active.append(lib)
                log(f"{lib} {entry['version']}: ok; {'; '.join(entry['serialisation_notes'])}")
            else:
                log(f"{lib}: SKIPPED: {entry['skip_reason']}")

        calib = runner.run("none", "calibrate", [], deadline=60) or {}
        work_iters = int(calib.get("result", {}).get("work_iters", 1000))
        work_us = calib.get("result", {}).get("work_us_p50")
        log(f"handler work: {work_iters} loop iterations ≈ {work_us} µs")
        target = ["--target-us", str(tail_cases.WORK_TARGET_US)]
        calib = runner.run("none", "calibrate", target, deadline=60) or {}
        paced_iters = int(calib.get("result", {}).get("work_iters", 700))

        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        floors: list[dict[str, Any]] = []
        sink_ceilings: list[float] = []

        def record(lib: str, scenario: str, doc: Optional[dict[str, Any]]) -> None:
            if doc and "result" in doc:
                raw.setdefault(lib, {}).setdefault(scenario, []).append(doc["result"])

        rounds_done = handler_rounds_done = 0
        handler_scenarios = [s for s in args.scenarios if s in HANDLER_SCENARIOS]
        total_rounds = args.rounds if not handler_scenarios else args.handler_rounds
        for rnd in range(total_rounds):
            if time.monotonic() > budget_end:
                log(f"time budget reached; stopping after {rnd} round(s)")
                break
            shift = rnd % max(1, len(active))
            order = active[shift:] + active[:shift]
            scenarios = list(args.scenarios)
            if rnd >= args.rounds:
                # An extra round of the handler cases only (see HANDLER_ROUNDS).
                scenarios = handler_scenarios
                order = [lib for lib in order if lib in HANDLER_ROUND_LIBS]
                log(f"--- handler round {rnd + 1}/{total_rounds} (e, g): {', '.join(order)}")
            else:
                log(f"--- round {rnd + 1}/{args.rounds}: order {', '.join(order) or '(none)'}")
                doc = runner.run("none", "floor", ["--n", str(c["floor_calls"])], deadline=60)
                if doc and "result" in doc:
                    floors.append(doc["result"])
                if "throughput" in args.scenarios:
                    doc = runner.run("none", "sink_ceiling", ["--n", str(c["sink_requests"])], 60)
                    if doc and "result" in doc:
                        sink_ceilings.append(doc["result"]["events_per_s"])
            for scenario in scenarios:
                libs_here: list[str] = order
                pairs: list[str] = []
                if scenario == "paced_handler":
                    libs_here = ["none", *order] if rnd % 2 == 0 else [*order, "none"]
                elif scenario == "handler":
                    # Each library's run right next to its own no-analytics run (order
                    # alternating), so both see the same machine state (tail_cases.py).
                    libs_here, pairs = tail_cases.handler_schedule(order, rnd)
                for slot, lib in enumerate(libs_here):
                    coerce = ",".join(libraries.get(lib, {}).get("coerce") or [])
                    extra = ["--coerce", coerce] if coerce else []
                    if scenario in tail_cases.SCENARIOS:
                        extra += tail_cases.worker_args(scenario, c, paced_iters)
                        doc = runner.run(lib, scenario, extra, deadline=120.0)
                        record(lib, scenario, doc)
                        progress(scenario, lib, doc)
                        continue
                    if scenario == "memory":
                        modes = ["rss"] + (["tracemalloc"] if rnd < args.tracemalloc_rounds else [])
                        for mode in modes:
                            doc = runner.run(
                                lib,
                                "memory",
                                [*extra, "--n", str(c["memory_messages"]), "--memory-mode", mode],
                                deadline=240,
                            )
                            record(lib, f"memory_{mode}", doc)
                            progress(f"memory_{mode}", lib, doc)
                        continue
                    if scenario == "latency":
                        extra += ["--n", str(c["latency_calls"])]
                        extra += ["--warmup", str(c["latency_warmup"])]
                        deadline = 120.0
                    elif scenario == "throughput":
                        extra += ["--n", str(c["throughput_events"])]
                        deadline = 240.0
                    else:
                        extra += ["--work-iters", str(work_iters), "--rate", "1000"]
                        extra += ["--duration", str(c["handler_seconds"])]
                        deadline = 90.0
                    doc = runner.run(lib, scenario, extra, deadline=deadline)
                    if pairs and doc and "result" in doc:
                        doc["result"].update(round=rnd, paired_with=pairs[slot])
                    record(lib, scenario, doc)
                    progress(scenario, lib, doc)
            if rnd < args.rounds:
                rounds_done += 1
            handler_rounds_done = rnd + 1 if handler_scenarios else 0
    finally:
        sink.stop()

    # ----------------------------------------------------------------- aggregate
    results: dict[str, dict[str, Optional[float]]] = {}
    for lib in args.libs:
        per_lib: dict[str, Optional[float]] = {}
        for metric in METRICS:
            values = [metric.extract(d) for d in raw.get(lib, {}).get(metric.scenario, [])]
            present = [v for v in values if v is not None]
            per_lib[metric.key] = median(present) if present else None
        results[lib] = per_lib

    baseline: dict[str, Optional[float]] = {}
    for key, path in (
        ("p50_us", "p50_us"),
        ("p99_us", "p99_us"),
        ("response_p50_us", "response_p50_us"),
        ("response_p99_us", "response_p99_us"),
    ):
        vals = [d.get(path) for d in raw.get("none", {}).get("handler", [])]
        present = [float(v) for v in vals if isinstance(v, (int, float))]
        baseline[key] = median(present) if present else None
    for lib in args.libs:
        # Case e's increase: each run minus its own paired baseline, median over rounds.
        results[lib].update(tail_cases.handler_overhead_paired(raw, lib))

    floor: dict[str, Any] = {}
    for name in ("timer", "build_event", "deque_append", "orjson_dumps"):
        for stat in ("p50_us", "p99_us"):
            vals = [f[name][stat] for f in floors if isinstance(f.get(name), dict)]
            floor[f"{name}_{stat}"] = median(vals) if vals else None
    for name in ("event_dict", "orjson_bytes", "exact_size_bytes"):
        vals = [
            f["retained_bytes"][name] for f in floors if isinstance(f.get("retained_bytes"), dict)
        ]
        floor[f"retained_{name}"] = median(vals) if vals else None
    sizes = [f.get("encoded_object_bytes") for f in floors if f.get("encoded_object_bytes")]
    floor["encoded_object_bytes"] = median(sizes) if sizes else None
    floor["sink_ceiling_events_per_s"] = median(sink_ceilings) if sink_ceilings else None
    enc = [f.get("encoded_bytes") for f in floors if f.get("encoded_bytes")]
    floor["encoded_json_bytes"] = median(enc) if enc else None

    ratios: dict[str, dict[str, Optional[float]]] = {}
    for peer in PEERS:
        if peer not in args.libs:
            continue
        per: dict[str, Optional[float]] = {}
        for metric in METRICS:
            mine, theirs = (
                results.get("tracklane", {}).get(metric.key),
                results[peer].get(metric.key),
            )
            per[metric.key] = mine / theirs if mine is not None and theirs else None
        ratios[f"tracklane/{peer}"] = per

    table = render_table(args, results, ratios, floor, baseline)
    peers_here = [p for p in PEERS if p in args.libs and "tracklane" in args.libs]
    tail_rows = tail_cases.summarise(raw, results, list(args.libs), peers_here)
    table += "\n\n" + "\n".join(tail_rows)
    notes = render_notes(args, libraries, floor, baseline, work_iters, work_us, rounds_done, python)
    if handler_rounds_done > rounds_done:
        notes += (
            f"\nRows e. and g. of tracklane and segment (and their no-analytics runs): medians "
            f"of {handler_rounds_done} rounds, the last {handler_rounds_done - rounds_done} of "
            "them running only those two cases (--handler-rounds); posthog's and rudder's: "
            f"{rounds_done}."
        )
    busy = max(load_start[0], os.getloadavg()[0])
    if busy > (os.cpu_count() or 1) / 2:
        notes += (
            f"\n\nWarning: the machine was busy (1-minute load average up to {busy:.1f} on "
            f"{os.cpu_count()} CPUs); tail latencies are noisier than on an idle machine."
        )
    finished = time.time()
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "meta": {
            "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "finished_at": datetime.fromtimestamp(finished, timezone.utc).isoformat(),
            "duration_s": finished - started,
            "rounds_requested": args.rounds,
            "rounds_done": rounds_done,
            "handler_rounds_done": handler_rounds_done,
            "quick": args.quick,
            "scenarios": args.scenarios,
            "counts": args.counts,
            "handler_work_iters": work_iters,
            "handler_work_us": work_us,
            "settings": {
                "max_queue_size": MAX_QUEUE_SIZE,
                "batch_size": UPLOAD_SIZE,
                "upload_interval_s": UPLOAD_INTERVAL,
                "gzip": args.gzip,
            },
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "interpreter": python,
            "environment": env_info,
        },
        "libraries": libraries,
        "floor": floor,
        "baseline_handler": baseline,
        "results": results,
        "ratios": ratios,
        "runs": raw,
        "errors": runner.errors,
        "table_markdown": table,
        "notes_markdown": notes,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(table)
    print()
    print(notes)
    log(f"wrote {args.output} in {finished - started:.0f} s")
    if runner.errors:
        log(f"{len(runner.errors)} measurement(s) failed; see 'errors' in the JSON")
        if args.strict:
            return 1
    return 0


def render_table(
    args: argparse.Namespace,
    results: dict[str, dict[str, Optional[float]]],
    ratios: dict[str, dict[str, Optional[float]]],
    floor: dict[str, Any],
    baseline: dict[str, Optional[float]],
) -> str:
    libs = list(args.libs)
    ratio_cols = [k for k in ratios if "tracklane" in libs]
    header = [
        "metric",
        "floor / no analytics",
        *libs,
        *[f"{k.replace('/', ' ÷ ')}" for k in ratio_cols],
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    mem_floor = (
        f"dict {fmt_value(floor.get('retained_event_dict'), 'int')}; "
        f"orjson bytes {fmt_value(floor.get('retained_orjson_bytes'), 'int')}; "
        f"exact bytes {fmt_value(floor.get('retained_exact_size_bytes'), 'int')}"
    )
    build_p50 = floor.get("build_event_p50_us")
    build_cpu = build_p50 * 100_000 / 1e6 if build_p50 is not None else None
    floor_cells = {
        "track_p50_us": (
            f"deque {fmt_value(floor.get('deque_append_p50_us'), 'us')}; "
            f"orjson {fmt_value(floor.get('orjson_dumps_p50_us'), 'us')}"
        ),
        "track_p99_us": (
            f"deque {fmt_value(floor.get('deque_append_p99_us'), 'us')}; "
            f"orjson {fmt_value(floor.get('orjson_dumps_p99_us'), 'us')}"
        ),
        "events_per_s": f"sink ceiling {fmt_value(floor.get('sink_ceiling_events_per_s'), 'int')}",
        "cpu_s_per_100k": f"building the events {fmt_value(build_cpu, 's')}",
        "mem_rss_bytes_per_msg": mem_floor,
        "mem_tracemalloc_bytes_per_msg": mem_floor,
        "handler_p50_us": fmt_value(baseline.get("p50_us"), "us"),
        "handler_p99_us": fmt_value(baseline.get("p99_us"), "us"),
        "handler_response_p50_us": fmt_value(baseline.get("response_p50_us"), "us"),
        "handler_response_p99_us": fmt_value(baseline.get("response_p99_us"), "us"),
    }
    for metric in METRICS:
        if not metric.in_table:
            continue
        if not any(results[lib].get(metric.key) is not None for lib in libs):
            continue
        row = [metric.label, floor_cells.get(metric.key, "")]
        row += [fmt_value(results[lib].get(metric.key), metric.fmt) for lib in libs]
        row += [fmt_ratio(ratios[k].get(metric.key)) for k in ratio_cols]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_notes(
    args: argparse.Namespace,
    libraries: dict[str, dict[str, Any]],
    floor: dict[str, Any],
    baseline: dict[str, Optional[float]],
    work_iters: int,
    work_us: Optional[float],
    rounds_done: int,
    python: str,
) -> str:
    c = args.counts
    lines = [
        f"Medians of {rounds_done} round(s) "
        f"(tracemalloc: {min(rounds_done, args.tracemalloc_rounds)}); "
        f"Python {platform.python_version()} on {os.cpu_count()} CPU(s); "
        f"every library with max_queue_size={MAX_QUEUE_SIZE:,}, batches of {UPLOAD_SIZE}, "
        f"upload interval {UPLOAD_INTERVAL} s, gzip {'on' if args.gzip else 'off'}.",
        f"Counts: a. {c['latency_calls']:,} timed calls (bursts of 100, 2 ms pauses); "
        f"b./d. {c['throughput_events']:,} events; c. {c['memory_messages']:,} queued messages; "
        f"e. {c['handler_seconds']:g} s at 1,000 requests/s "
        f"({c['handler_seconds'] * 1000:,.0f} timed requests per run), {work_iters} loop "
        f"iterations ≈ {work_us} µs of work per request; each library's run is paired with a "
        "no-analytics run next to it in the same round, and its increase is the median over "
        "rounds of the paired differences.",
        "Ratios are tracklane ÷ peer: below 1 is better except for events/s.",
        f"Floors: building the event {fmt_value(floor.get('build_event_p50_us'), 'us')} µs (p50, "
        f"included in b./d./e. for every library); timer pair "
        f"{fmt_value(floor.get('timer_p50_us'), 'us')} µs; encoded event "
        f"{fmt_value(floor.get('encoded_json_bytes'), 'int')} bytes of JSON.",
        "",
        "Libraries:",
    ]
    for lib, entry in libraries.items():
        if entry.get("available"):
            notes = "; ".join(entry.get("serialisation_notes") or []) or "accepts the event as is"
            ignored = entry.get("settings_ignored") or []
            extra = f" (ignored settings: {', '.join(ignored)})" if ignored else ""
            paths = ", ".join(sorted((entry.get("paths") or {}).keys()))
            lines.append(f"- {lib} {entry.get('version')}: posts to {paths}; {notes}{extra}")
        else:
            lines.append(f"- {lib}: skipped ({entry.get('skip_reason')})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
