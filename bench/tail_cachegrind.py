"""Instructions and cache misses of one cold ``track()`` call, by cachegrind (issue 14).

Runs this file under ``valgrind --tool=cachegrind --cache-sim=yes`` twice: ``N`` calls of
case f's order (bench/tail_cases.py), each after ~300 steps of Python over a 200,000-string
list (so that the call's code and data are out of the caches, as between a web server's
requests), and the same loop without the calls; prints the difference per call. The counts
are deterministic, so they compare trees on a busy machine where wall-clock tails cannot::

    .venv/bin/python bench/tail_cachegrind.py                   # this tree's src/
    .venv/bin/python bench/tail_cachegrind.py --src /tmp/base-src --warm

Needs ``valgrind`` (Debian: ``apt-get install valgrind``); about a minute per tree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import Dict

HERE = os.path.dirname(os.path.abspath(__file__))


def _loop(src: str, calls: int, cold: bool, with_calls: bool) -> None:
    """The measured loop (run under valgrind)."""
    sys.path.insert(0, src)
    sys.path.insert(0, HERE)
    from tail_cases import make_order

    import tracklane

    client = tracklane.Client("bench", send=False)
    orders = [make_order(i) for i in range(calls + 200)]
    for order in orders[:200]:
        client.track(**order)
    try:  # the worker's stock of ids, where the tree has one (as in a running client)
        from tracklane import _ids

        _ids.stock_message_ids(calls + 10)
    except ImportError:
        pass
    junk = [str(i) * 3 for i in range(200_000)]
    track = client.track
    total = 0
    for i in range(calls):
        if cold:
            start = (i * 7919) % 150_000
            for j in range(start, start + 300):
                total += len(junk[j * 37 % 200_000])
        if with_calls:
            track(**orders[200 + i])


def _totals(path: str) -> Dict[str, int]:
    events: list[str] = []
    with open(path) as lines:
        for line in lines:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:"):
                return dict(zip(events, map(int, line.split()[1:])))
    raise RuntimeError(f"no summary in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=os.path.join(HERE, "..", "src"), help="tree to import")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--warm", action="store_true", help="no list walk between calls")
    parser.add_argument("--child", choices=["call", "none"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    src = os.path.abspath(args.src)
    if args.child:
        _loop(src, args.calls, not args.warm, args.child == "call")
        return
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("call", "none"):
            out = os.path.join(tmp, f"cg.{mode}.out")
            command = ["valgrind", "--tool=cachegrind", "--cache-sim=yes"]
            command += [f"--cachegrind-out-file={out}", sys.executable, __file__]
            command += ["--src", src, "--calls", str(args.calls), "--child", mode]
            command += ["--warm"] if args.warm else []
            subprocess.run(command, check=True, capture_output=True)
            runs[mode] = _totals(out)
    per_call = {e: (runs["call"][e] - runs["none"][e]) / args.calls for e in runs["call"]}
    print(f"tracklane from {src}, {'warm' if args.warm else 'cold'}, {args.calls} calls")
    print(
        f"per call: instructions {per_call['Ir']:,.0f}, I1 misses {per_call['I1mr']:,.0f}, "
        f"D1 read misses {per_call['D1mr']:,.0f}"
    )


if __name__ == "__main__":
    main()
