"""The event loop is never blocked by AsyncClient: loop lag measured while it works hard."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import List, Tuple

import pytest

import tracklane
from helpers import Action, RecordingServer

EVENTS = 10_000
BOUND = 0.100  # generous: a blocking call (a socket wait, a sleep, a disk write) exceeds it


async def measure_lag(stop: asyncio.Event, lags: List[float], tick: float = 0.005) -> None:
    """A ticker: how late each 5 ms sleep wakes up is what every other task waits too."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(tick)
        lags.append(loop.time() - start - tick)


async def track_all(client: tracklane.AsyncClient, prefix: str) -> None:
    """10,000 calls, 100 per loop turn, as request handlers would make them."""
    for start in range(0, EVENTS, 100):
        for i in range(start, start + 100):
            client.track("user", prefix, {"i": i})
        await asyncio.sleep(0)


def summary(lags: List[float]) -> Tuple[float, float]:
    ordered = sorted(lags)
    return ordered[int(len(ordered) * 0.99)], ordered[-1]


@pytest.mark.slow
def test_loop_lag_stays_small_with_a_slow_server_and_with_a_dead_one(capsys):
    """A ticker's lag stays under 100 ms while 10,000 events go to a 1 s server, then a dead one.

    The p99 bound is over the p99 the same ticker sees on an idle loop on this machine first.
    """
    server = RecordingServer()
    server.default = Action(delay=1.0)
    report = {}

    async def main() -> None:
        client = tracklane.AsyncClient(
            "k",
            host=server.url,
            batch_size=2500,
            max_queue_size=25_000,
            flush_interval=0.05,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        # The machine's own lag first (a loaded CI box shows tens of ms with nothing to do).
        idle_stop = asyncio.Event()
        idle: List[float] = []
        idle_ticker = asyncio.create_task(measure_lag(idle_stop, idle))
        await asyncio.sleep(1.0)
        idle_stop.set()
        await idle_ticker
        report["idle"] = (*summary(idle), 1.0, len(idle))

        stop = asyncio.Event()
        lags: List[float] = []
        ticker = asyncio.create_task(measure_lag(stop, lags))
        started = time.monotonic()
        await track_all(client, "Slow server")
        assert await client.flush(60)
        report["slow"] = (*summary(lags), time.monotonic() - started, len(lags))
        assert len(server.accepted()) == EVENTS
        assert server.max_in_flight == 1

        await client.shutdown(2)

        # Down: nothing listens on the port, every attempt is refused and retried.
        dead = socket.create_server(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        down = tracklane.AsyncClient(
            "k",
            host=f"http://127.0.0.1:{dead_port}",
            batch_size=2500,
            max_queue_size=25_000,
            flush_interval=0.05,
            max_retries=1_000,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        lags.clear()
        started = time.monotonic()
        await track_all(down, "Dead server")
        await asyncio.sleep(1.0)  # the ticker keeps measuring while retries go on
        report["down"] = (*summary(lags), time.monotonic() - started, len(lags))
        stop.set()
        await ticker
        await down.shutdown(0.5)
        stats = down.stats()
        assert stats.retries > 10
        assert stats.dropped == {"shutdown": EVENTS}
        assert client.stats().delivered == EVENTS

    asyncio.run(main())
    server.close()
    with capsys.disabled():
        for phase, (p99, worst, seconds, ticks) in report.items():
            print(
                f"\nloop lag, {phase}: p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms"
                f" over {seconds:.1f} s ({ticks} ticks)"
            )
    noise_p99 = report["idle"][0]
    for phase in ("slow", "down"):
        p99, worst, _, _ = report[phase]
        # A call blocking the loop on the network would stall it for the server's whole answer
        # (1 s) on every request: p99 far over the bound, the worst tick over a second. A
        # single late tick alone is the machine (the idle ticker's worst varies from 4 to
        # 50 ms on a loaded CI box), so the worst tick is held to half of that second.
        assert p99 < noise_p99 + BOUND, f"{phase}: loop lag p99 {p99 * 1000:.0f} ms"
        assert worst < 0.5, f"{phase}: the loop was blocked for {worst * 1000:.0f} ms"
