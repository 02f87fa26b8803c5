"""Case g (the paced handler) alone, interleaved across trees and libraries, many rounds.

``bench/run.py --metric paced_handler`` measures the current tree only; this compares
source trees (e.g. main against a branch) and segment in the same rounds, each run in its
own process, the order rotating every round::

    .bench-venv/bin/python bench/tail_paced.py --rounds 6 \\
        --tree main=/path/to/main/src --tree branch=src

Per round it prints each run's p50/p99 and its p99 increase over that round's run without
analytics; at the end the median and range over rounds, and the ratios against segment
(medians of the per-round ratios, which pair runs taken at the same load, and the ratio
of the medians, as ``make bench`` reports it). ``--scenario tight_loop`` (case f) and
``--scenario throughput`` (delivered events/s, case b) compare the trees the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import tail_cases  # noqa: E402
from run import Sink, worker_env  # noqa: E402


def run_worker(
    python: str, url: str, lib: str, src: Optional[str], extra: List[str]
) -> Optional[Dict[str, Any]]:
    """One worker.py process; ``src`` puts that tree's tracklane first on the path."""
    env = worker_env()
    if src is not None:
        env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"]
    cmd = [python, str(BENCH_DIR / "worker.py"), "--lib", lib, "--url", url, *extra]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=200, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            doc: Dict[str, Any] = json.loads(line[len("RESULT ") :])
            if "result" in doc:
                return doc
            print(f"  ! {lib}: {doc.get('error')}", file=sys.stderr)
            return None
    print(f"  ! {lib}: no result: {proc.stderr[-500:]}", file=sys.stderr)
    return None


def _num(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def _spread(vals: List[float]) -> str:
    return f"{_num(statistics.median(vals))} [{_num(min(vals))} to {_num(max(vals))}]"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="a tracklane source tree to measure (repeatable); default: this tree's src",
    )
    p.add_argument("--no-segment", action="store_true", help="leave segment out")
    p.add_argument(
        "--scenario",
        default="paced_handler",
        choices=["paced_handler", "tight_loop", "throughput"],
        help="case g (default), case f, or delivered events/s (case b)",
    )
    p.add_argument("--requests", type=int, default=tail_cases.FULL_COUNTS["paced_requests"])
    p.add_argument("--rate", type=float, default=1500.0)
    p.add_argument("--work-iters", type=int, default=0, help="0: calibrate to ~34 us")
    args = p.parse_args()
    python = sys.executable
    trees: List[Tuple[str, str]] = []
    for item in args.tree or [f"tracklane={REPO / 'src'}"]:
        name, _, src = item.partition("=")
        trees.append((name, str(Path(src).resolve())))
    paced = args.scenario == "paced_handler"
    sink = Sink(python, max_seconds=3600)
    try:
        extra = ["--scenario", args.scenario]
        if paced:
            iters = args.work_iters
            if not iters:
                cal = run_worker(
                    python,
                    sink.url,
                    "none",
                    None,
                    ["--scenario", "calibrate", "--target-us", str(tail_cases.WORK_TARGET_US)],
                )
                iters = int((cal or {}).get("result", {}).get("work_iters", 700))
            extra += ["--n", str(args.requests), "--rate", str(args.rate)]
            extra += ["--work-iters", str(iters)]
            print(f"work iters {iters}")
        elif args.scenario == "tight_loop":
            extra += tail_cases.worker_args("tight_loop", tail_cases.FULL_COUNTS, 0)
        else:
            extra += ["--n", "100000"]
        # (label, lib, src, coerce)
        runs: List[Tuple[str, str, Optional[str], str]] = []
        if paced:
            runs.append(("none", "none", None, ""))
        runs += [(name, "tracklane", src, "") for name, src in trees]
        if not args.no_segment:
            runs.append(("segment", "segment", None, "decimal,datetime"))
        keys = ("p50_us", "p99_us", "p99_increase_us") if paced else ("p50_us", "p99_us")
        if args.scenario == "throughput":
            keys = ("cpu_s_per_100k", "events_per_s")
        elif not paced:
            keys = ("delivered_during_loop", "p50_us", "p99_us")
        print(f"{args.scenario}; load {os.getloadavg()[0]:.1f}; sink {sink.url}")
        rounds: List[Dict[str, Dict[str, float]]] = []
        for rnd in range(args.rounds):
            shift = rnd % len(runs)
            got: Dict[str, Dict[str, float]] = {}
            for label, lib, src, coerce in runs[shift:] + runs[:shift]:
                more = ["--coerce", coerce] if coerce else []
                doc = run_worker(python, sink.url, lib, src, extra + more)
                if doc is not None:
                    got[label] = dict(doc["result"])
            if paced:
                base = got.pop("none", None)
                if base is None:
                    continue
                for res in got.values():
                    res["p99_increase_us"] = res["p99_us"] - base["p99_us"]
            rounds.append(got)
            cells = [
                f"{label} " + " ".join(f"{k} {_num(res[k])}" for k in keys if k in res)
                for label, res in got.items()
            ]
            print(f"round {rnd + 1} load {os.getloadavg()[0]:.1f}: " + "; ".join(cells), flush=True)
        print("\nmedian [min to max] over rounds")
        for label, *_ in runs:
            rows = [r[label] for r in rounds if label in r]
            if rows:
                cells = [f"{k} {_spread([r[k] for r in rows])}" for k in keys]
                print(f"  {label:>12}: " + "; ".join(cells))
        key = keys[-1]
        if not args.no_segment:
            print(f"ratio of {key} to segment's, paired per round: median [min to max]")
            for name, _ in trees:
                pairs = [
                    (r[name][key], r["segment"][key])
                    for r in rounds
                    if name in r and "segment" in r and r["segment"][key] > 0
                ]
                if pairs:
                    ratios = [m / s for m, s in pairs]
                    of_medians = statistics.median(m for m, _ in pairs) / statistics.median(
                        s for _, s in pairs
                    )
                    print(
                        f"  {name:>12}: {statistics.median(ratios):.2f}x "
                        f"[{min(ratios):.2f} to {max(ratios):.2f}] over {len(pairs)} rounds; "
                        f"ratio of the medians {of_medians:.2f}x"
                    )
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
