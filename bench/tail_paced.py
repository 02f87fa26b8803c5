"""Case g (the paced handler) alone, interleaved across trees and libraries, many rounds.

``bench/run.py --metric paced_handler`` measures the current tree only; this compares
source trees (e.g. main against a branch) and segment in the same rounds, each run in its
own process, the order rotating every round::

    .bench-venv/bin/python bench/tail_paced.py --rounds 6 \\
        --tree main=/path/to/main/src --tree branch=src

Per round it prints each run's p50/p99 and its p99 increase over that round's run without
analytics; at the end the median and range over rounds, and the ratios against segment
(medians of the per-round ratios, which pair runs taken at the same load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
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
    p.add_argument("--requests", type=int, default=tail_cases.FULL_COUNTS["paced_requests"])
    p.add_argument("--rate", type=float, default=1500.0)
    p.add_argument("--work-iters", type=int, default=0, help="0: calibrate to ~34 µs")
    args = p.parse_args()
    python = sys.executable
    trees: List[Tuple[str, str]] = []
    for item in args.tree or [f"tracklane={REPO / 'src'}"]:
        name, _, src = item.partition("=")
        trees.append((name, str(Path(src).resolve())))
    sink = Sink(python, max_seconds=3600)
    try:
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
        # (label, lib, src, coerce)
        runs: List[Tuple[str, str, Optional[str], str]] = [("none", "none", None, "")]
        runs += [(name, "tracklane", src, "") for name, src in trees]
        if not args.no_segment:
            runs.append(("segment", "segment", None, "decimal,datetime"))
        extra = ["--scenario", "paced_handler", "--n", str(args.requests)]
        extra += ["--rate", str(args.rate), "--work-iters", str(iters)]
        print(f"work iters {iters}; load {os.getloadavg()[0]:.1f}; sink {sink.url}")
        per: Dict[str, List[Dict[str, float]]] = {label: [] for label, *_ in runs}
        for rnd in range(args.rounds):
            shift = rnd % len(runs)
            order = runs[shift:] + runs[:shift]
            got: Dict[str, Dict[str, float]] = {}
            for label, lib, src, coerce in order:
                more = ["--coerce", coerce] if coerce else []
                doc = run_worker(python, sink.url, lib, src, extra + more)
                if doc is not None:
                    got[label] = doc["result"]
            base = got.get("none")
            line = [f"round {rnd + 1} load {os.getloadavg()[0]:.1f}:"]
            for label, *_ in runs:
                res = got.get(label)
                if res is None or base is None:
                    continue
                res = dict(res, p99_increase_us=res["p99_us"] - base["p99_us"])
                per[label].append(res)
                line.append(
                    f"{label} p50 {res['p50_us']:.0f} p99 {res['p99_us']:.0f} "
                    f"(+{res['p99_increase_us']:.0f})"
                )
            print("  ".join(line), flush=True)
        print("\nmedian [min–max] over rounds, µs")
        for label, *_ in runs:
            rows = per[label]
            if not rows:
                continue
            cells = []
            for key in ("p50_us", "p99_us", "p99_increase_us"):
                vals = [r[key] for r in rows]
                cells.append(
                    f"{key} {statistics.median(vals):.0f} [{min(vals):.0f}–{max(vals):.0f}]"
                )
            print(f"  {label:>12}: " + "; ".join(cells))
        seg = per.get("segment") or []
        if seg:
            print("ratio of p99 increase to segment's (per round; median [min–max])")
            for name, _ in trees:
                ratios = [
                    m["p99_increase_us"] / s["p99_increase_us"]
                    for m, s in zip(per[name], seg)
                    if s["p99_increase_us"] > 0
                ]
                if ratios:
                    print(
                        f"  {name:>12}: {statistics.median(ratios):.2f}× "
                        f"[{min(ratios):.2f}–{max(ratios):.2f}] over {len(ratios)} rounds; "
                        "of medians: "
                        f"{statistics.median(r['p99_increase_us'] for r in per[name]) / statistics.median(s['p99_increase_us'] for s in seg):.2f}×"
                    )
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    time.sleep(0)
    sys.exit(main())
