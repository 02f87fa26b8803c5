"""One ``Client.track()`` call alone, and its steps, on the calling thread (issue 14).

The call of the tight loop (bench/tail_cases.py, case f: 11 properties with an aware datetime
and two Decimals, ~630 bytes on the wire) with ``send=False``, so that no worker shares the
CPU: ``warm`` is timeit's best of 9 runs of 50,000 back-to-back calls; ``cold`` times 3,000
calls one by one, each after ~15 µs of other Python touching a 200,000-string list, as a web
server's calls come between requests. Run it in two trees to compare them::

    (cd /work/main && .venv/bin/python /path/to/bench/track_call.py)
"""

from __future__ import annotations

import os
import sys
import time
import timeit
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import orjson
from tail_cases import make_order

import tracklane
import tracklane._worker  # imports tracklane._ids where the tree has it
from tracklane import messages


def main() -> None:
    client = tracklane.Client("bench", send=False)
    orders = [make_order(i) for i in range(50_000)]
    _, message = client.track(**orders[0])
    encode_options = getattr(tracklane._encode, "FAST_OPTIONS", tracklane._encode.ORJSON_OPTIONS)
    steps: Dict[str, Callable[[], object]] = {
        "now_timestamp()": messages.now_timestamp,
        "new_message_id()": messages.new_message_id,
        "orjson.dumps(message)": lambda: orjson.dumps(
            message, default=client._default, option=encode_options
        ),
    }
    print(f"tracklane from {os.path.dirname(tracklane.__file__)}")
    for name, step in steps.items():
        best = min(timeit.repeat(step, number=50_000, repeat=9)) / 50_000
        print(f"warm {name:24s} {best * 1e6:6.2f} µs")
    calls = iter(orders * 10)
    # With send=False no worker runs; stock the message ids it would have made between
    # batches (tracklane._ids, where the tree has it), so the call is timed as it runs.
    stock = getattr(getattr(tracklane, "_ids", None), "stock_message_ids", None)
    setup = (lambda: stock(50_000)) if stock else (lambda: None)
    runs = timeit.repeat(lambda: client.track(**next(calls)), setup, number=50_000, repeat=9)
    best, median = sorted(runs)[0] / 50_000 * 1e6, sorted(runs)[4] / 50_000 * 1e6
    print(f"warm {'track()':24s} {best:6.2f} µs (median {median:.2f})")
    junk = [str(i) * 3 for i in range(200_000)]
    clock = time.perf_counter_ns
    durations: List[int] = []
    setup()
    for i in range(3_000):
        order = orders[i]
        start = (i * 7919) % 150_000
        total = 0
        for j in range(start, start + 300):
            total += len(junk[j * 37 % 200_000])
        began = clock()
        client.track(**order)
        durations.append(clock() - began)
    durations.sort()
    print(f"cold track(): p50 {durations[1500] / 1000:.2f} µs, p99 {durations[2970] / 1000:.2f} µs")


if __name__ == "__main__":
    main()
