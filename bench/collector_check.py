"""CPU per event of checking ingest batches: read shallowly (msgspec) or parsed whole.

``check_request`` reads a batch shallowly (``collector/_shallow.py``) and falls back to
``check_request_fully``, the full parse (orjson, every message checked and encoded again),
for anything unusual. Both are run in turn on the same realistic 100-event bodies as
``bench/collector_ingest.py`` sends (compact JSON, as tracklane's and orjson-based clients
write it, or ``--form spaced``, as Python's json module writes it), in this process, with no
HTTP: the CPU time per event of each, over several rounds, and their ratio.

    python bench/collector_check.py
    python bench/collector_check.py --form spaced --rounds 9
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

import orjson
from collector_ingest import batch_templates

from tracklane.collector._check import check_request, check_request_fully
from tracklane.collector._ingest import Prepared

Check = Callable[[bytes], object]


def bodies(count: int, spaced: bool) -> List[bytes]:
    """``count`` 100-event bodies with distinct messageIds, compact or spaced."""
    rng = random.Random(7)
    templates = batch_templates(rng, 1, (100, 100), True)
    result = []
    for number in range(count):
        body = templates[number % len(templates)][0].replace(b"@@@@@@@@", b"%08x" % number)
        if spaced:
            body = json.dumps(orjson.loads(body)).encode("ascii")
        result.append(body)
    return result


def cpu_per_event(check: Check, batch: List[bytes], repeat: int) -> float:
    """This process's CPU time per event, in µs, checking every body ``repeat`` times."""
    start = time.process_time()
    for _ in range(repeat):
        for body in batch:
            check(body)
    return (time.process_time() - start) / (repeat * len(batch) * 100) * 1e6


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--form", choices=("compact", "spaced"), default="compact")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of both, in turn")
    parser.add_argument("--bodies", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=10, help="passes over the bodies a round")
    args = parser.parse_args(argv)
    received = datetime.now(timezone.utc)
    batch = bodies(args.bodies, args.form == "spaced")
    keys = frozenset({"bench-key"})

    def shallow(body: bytes) -> object:
        return check_request(body, "bench-key", None, received, keys)

    def full(body: bytes) -> object:
        return check_request_fully(body, "bench-key", None, received, keys)

    for check in (shallow, full):  # both give every event (the tests compare them closely)
        outcome = check(batch[0])
        if not isinstance(outcome, Prepared) or len(outcome.messages) != 100:
            raise SystemExit(f"{check.__name__}: unexpected outcome {outcome!r}")
    times: Dict[str, List[float]] = {"shallow": [], "full parse": []}
    for _ in range(args.rounds):
        times["shallow"].append(cpu_per_event(shallow, batch, args.repeat))
        times["full parse"].append(cpu_per_event(full, batch, args.repeat))
    size = sum(map(len, batch)) / (len(batch) * 100)
    print(f"Checking 100-event batches ({args.form}, {size:.0f} bytes per event), CPU per event:")
    for name, values in times.items():
        shown = " ".join(f"{value:.2f}" for value in values)
        print(f"  {name}: median {statistics.median(values):.2f} µs ({shown})")
    ratios = [a / b for a, b in zip(times["shallow"], times["full parse"])]
    print(f"  shallow / full parse, round by round: median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
