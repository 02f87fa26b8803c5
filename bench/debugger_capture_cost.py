"""What the debugger's refusal recorder costs an accepted ingest request.

``RejectCapture`` wraps every POST to an ingest path. This drives a minimal ASGI app
(reads the body, answers 200 with ``"rejected":[]``, as the collector does for a batch
stored whole) directly, with and without the wrapper, in interleaved rounds, and prints
the median added time per request. No sockets, no storage: only the wrapper's own cost.

    python bench/debugger_capture_cost.py --requests 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any, Dict, List

from tracklane.collector._rejects import RejectLog
from tracklane.collector.debugger._capture import RejectCapture

BODY = json.dumps(
    {"batch": [{"type": "track", "event": "E", "userId": "u", "n": n} for n in range(100)]}
).encode()
ANSWER = b'{"success":true,"stored":100,"duplicates":0,"rejected":[]}'
SCOPE: Dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/v1/batch",
    "headers": [(b"content-type", b"application/json")],
    "client": ("127.0.0.1", 5000),
}


async def app(scope: Any, receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": ANSWER})


async def receive() -> Dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


async def send(_message: Dict[str, Any]) -> None:
    return None


async def timed(target: Any, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await target(SCOPE, receive, send)
    return (time.perf_counter() - started) / requests * 1e6


async def main_async(requests: int, rounds: int) -> Dict[str, Any]:
    log = RejectLog()
    wrapped = RejectCapture(app, log, ["/v1/batch"])
    bare: List[float] = []
    with_capture: List[float] = []
    for _ in range(rounds):
        bare.append(await timed(app, requests))
        with_capture.append(await timed(wrapped, requests))
    assert log.total == 0
    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "bare_us": round(statistics.median(bare), 2),
        "with_capture_us": round(statistics.median(with_capture), 2),
        "added_us_per_request": round(statistics.median(with_capture) - statistics.median(bare), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.requests, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
