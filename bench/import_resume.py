"""``tracklane import`` at scale: its rate into a sink that only acknowledges, and exactly-once
delivery into the local collector across a SIGKILL.

1. Generates N realistic events as JSON Lines (most without a messageId).
2. Imports them into ``bench/sink.py`` (answers 200 at once): events/s and peak RSS of the
   importer process. Target: at least 50,000 events/s, i.e. limited by the receiver.
3. Starts ``tracklane serve``, imports the same file, SIGKILLs the importer once the state
   file shows half of it acknowledged, runs the same command again, then counts in the
   collector's SQLite file: every line stored exactly once.

    python bench/import_resume.py                     # 1,000,000 events, both parts
    python bench/import_resume.py --events 200000 --skip-collector
    # before/after, interleaved: the sink import with another source tree, in turn
    git archive main src | tar -x -C /tmp/base
    python bench/import_resume.py --events 200000 --skip-collector --repeat 5 \
        --baseline-src /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
TRACKLANE = Path(sys.executable).with_name("tracklane")
EVENTS = ("Order Completed", "Product Viewed", "Signed Up", "Checkout Started", "Search")


def generate(path: Path, count: int, seed: int = 7) -> None:
    """``count`` events like a web shop's history: tracks, identifies and pages (~400 bytes)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            day, hour, minute = 1 + n % 28, n % 24, n % 60
            stamp = f"2023-0{1 + n % 9}-{day:02d}T{hour:02d}:{minute:02d}:00.{n % 1000:03d}Z"
            user = f"user-{rng.randrange(100_000)}"
            context = {
                "ip": f"10.0.{n % 256}.{rng.randrange(256)}",
                "locale": "en-US",
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
            }
            kind = rng.random()
            if kind < 0.8:
                message = {
                    "type": "track",
                    "userId": user,
                    "event": EVENTS[n % 5],
                    "properties": {
                        "n": n,
                        "order_id": f"o-{n}",
                        "total": round(rng.random() * 300, 2),
                        "currency": "EUR",
                        "items": [{"sku": f"sku-{n % 977}", "qty": 1 + n % 3}],
                    },
                }
            elif kind < 0.9:
                message = {
                    "type": "identify",
                    "userId": user,
                    "traits": {"n": n, "email": f"{user}@example.com", "plan": "pro"},
                }
            else:
                message = {
                    "type": "page",
                    "anonymousId": f"anon-{n}",
                    "name": "Checkout",
                    "properties": {"n": n, "path": "/checkout"},
                }
            message["timestamp"] = stamp
            message["context"] = context
            if n % 10 == 0:
                message["messageId"] = f"bench-{n}"
            out.write(json.dumps(message, separators=(",", ":")) + "\n")


def run_measured(
    args: List[str], env: Optional[Dict[str, str]] = None
) -> Tuple[int, float, int, str, float]:
    """Run a command; return (exit code, wall seconds, peak RSS in KB, stdout, CPU seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if err.strip():
        print(err.strip(), file=sys.stderr)
    code = os.waitstatus_to_exitcode(status)
    return code, elapsed, int(usage.ru_maxrss), out, usage.ru_utime + usage.ru_stime


_PYCACHE: Optional[str] = None  # set by main: where the importer's bytecode is cached


def command_env(source: Optional[str] = None) -> Dict[str, str]:
    """The importer's environment: ``source`` first on the path; bytecode cached (as in an
    installed package) unless --cold-start, as a development shell with
    PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every start."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = source
    if _PYCACHE is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(_PYCACHE, "baseline" if source else "this")
        subprocess.run([str(TRACKLANE), "--version"], env=env, check=True, capture_output=True)
    return env


def into_sink(
    path: Path, count: int, batch_size: int, source: Optional[str] = None
) -> Dict[str, float]:
    """Import into the acknowledging sink; events/s and peak RSS. ``source``: the
    ``src`` directory of another tracklane to run instead of the installed one."""
    env = command_env(source)
    sink = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "sink.py"),
            "--port",
            "0",
            "--ppid",
            str(os.getpid()),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        state = Path(f"{path}.import-state.json")
        state.unlink(missing_ok=True)
        code, elapsed, rss, out, cpu = run_measured(
            [
                str(TRACKLANE),
                "import",
                str(path),
                "--writeKey=bench",
                f"--host={url}",
                "--progress=none",
                f"--batch-size={batch_size}",
            ],
            env,
        )
        stats = json.load(urllib.request.urlopen(f"{url}/_bench/stats", timeout=10))
    finally:
        sink.terminate()
        sink.wait(10)
    assert code == 0, out
    assert stats["events"] == count, stats
    sink_rate = count / max(stats["last_at"] - stats["first_at"], 1e-9)
    return {
        "seconds": elapsed,
        "events_per_s": count / elapsed,
        "sink_events_per_s": sink_rate,
        # On a shared machine the wall-clock rate depends on the other processes; events per
        # CPU second of the importer (all its threads) is what it does on a core of its own.
        "cpu_seconds": cpu,
        "events_per_cpu_s": count / cpu,
        "peak_rss_mb": rss / 1024,
        "requests": stats["requests"],
    }


def done_in(state: Path) -> int:
    try:
        inputs = json.loads(state.read_text())["inputs"]
    except (OSError, ValueError, KeyError):
        return 0
    return int(next(iter(inputs.values()))["done"]) if inputs else 0


def into_collector(path: Path, count: int, workdir: Path) -> Dict[str, float]:
    """Import into ``tracklane serve``, SIGKILL half-way, run again; count what was stored."""
    db = workdir / "events.db"
    server = subprocess.Popen(
        [str(TRACKLANE), "serve", "--port", "0", f"--db={db}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[-1]
        state = Path(f"{path}.import-state.json")
        state.unlink(missing_ok=True)
        command = [
            str(TRACKLANE),
            "import",
            str(path),
            "--writeKey=bench",
            f"--host={url}",
            "--progress=none",
        ]
        started = time.monotonic()
        env = command_env()
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
        while done_in(state) < count // 2:
            if first.poll() is not None:
                raise SystemExit(f"the first run ended early (exit {first.returncode})")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        _pid, _status, usage = os.wait4(first.pid, 0)
        first_seconds = time.monotonic() - started
        at_kill = done_in(state)
        code, second_seconds, rss, out, _cpu = run_measured(command, env)
        assert code == 0, out
    finally:
        server.terminate()
        server.wait(30)
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        numbers = conn.execute(
            "SELECT COUNT(DISTINCT COALESCE(json_extract(body, '$.properties.n'),"
            " json_extract(body, '$.traits.n'))) FROM events"
        ).fetchone()[0]
    assert rows == count == numbers, (rows, count, numbers)
    total = first_seconds + second_seconds
    return {
        "killed_at_acknowledged": at_kill,
        "stored_rows": rows,
        "distinct_lines": numbers,
        "first_run_s": first_seconds,
        "second_run_s": second_seconds,
        "events_per_s": count / total,
        "peak_rss_mb_first": usage.ru_maxrss / 1024,
        "peak_rss_mb_second": rss / 1024,
    }


def _brief(result: Dict[str, float]) -> str:
    return (
        f"{result['events_per_s']:,.0f} events/s, {result['events_per_cpu_s']:,.0f} per CPU s "
        f"({1e6 / result['events_per_cpu_s']:.1f} us CPU/event), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB"
    )


def _median(runs: List[Dict[str, float]]) -> Dict[str, float]:
    """Per figure, the median of the runs (each figure on its own)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--skip-sink", action="store_true")
    parser.add_argument("--skip-collector", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="sink imports (interleaved)")
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="another tracklane's src directory: its sink import runs in turn with this one's",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="keep the environment's bytecode setting (PYTHONDONTWRITEBYTECODE=1 compiles)",
    )
    args = parser.parse_args(argv)
    global _PYCACHE
    with tempfile.TemporaryDirectory(prefix="tracklane-import-bench-") as tmp:
        workdir = Path(tmp)
        _PYCACHE = None if args.cold_start else str(workdir / "pycache")
        path = workdir / "history.jsonl"
        started = time.monotonic()
        generate(path, args.events)
        size = path.stat().st_size
        print(
            f"generated {args.events:,} events ({size / 1e6:.0f} MB) in "
            f"{time.monotonic() - started:.1f}s; load average {os.getloadavg()[0]:.1f}"
        )
        results: Dict[str, Dict[str, float]] = {}
        if not args.skip_sink:
            runs: Dict[str, List[Dict[str, float]]] = {"this": [], "baseline": []}
            for _ in range(args.repeat):
                for name in ("baseline", "this"):
                    if name == "baseline" and args.baseline_src is None:
                        continue
                    source = args.baseline_src if name == "baseline" else None
                    result = into_sink(path, args.events, args.batch_size, source)
                    runs[name].append(result)
                    if args.repeat > 1 or args.baseline_src:
                        print(f"{name}: " + _brief(result), flush=True)
            results["sink"] = _median(runs["this"])
            print("into the sink:", json.dumps(results["sink"], indent=1))
            if runs["baseline"]:
                base = _median(runs["baseline"])
                print("baseline into the sink:", json.dumps(base, indent=1))
                this = results["sink"]
                print(
                    f"this / baseline: events/s x{this['events_per_s'] / base['events_per_s']:.2f}"
                    f", per CPU s x{this['events_per_cpu_s'] / base['events_per_cpu_s']:.2f}"
                )
        if not args.skip_collector:
            results["collector"] = into_collector(path, args.events, workdir)
            print(
                "into the collector, SIGKILL half-way:", json.dumps(results["collector"], indent=1)
            )
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
