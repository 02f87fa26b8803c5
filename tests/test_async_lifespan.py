"""AsyncClient in a real ASGI app: Starlette under uvicorn, opened and closed in the lifespan."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tracklane.collector import serve_in_thread

KEY = "lifespan-key"
REQUESTS = 2_000

APP = """
import contextlib, json, sys
import tracklane
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.analytics = tracklane.AsyncClient({key!r}, host={host!r}, flush_interval=0.5)
    yield
    result = await app.state.analytics.shutdown(20)
    stats = result.stats
    print(json.dumps({{"complete": result.complete, "tracked": stats.tracked,
                       "delivered": stats.delivered, "dropped": stats.dropped}}), flush=True)

async def order(request):
    i = int(request.path_params["i"])
    ok, _ = request.app.state.analytics.track("buyer", "Order Placed", {{"i": i}})
    return PlainTextResponse("ok" if ok else "not queued")

async def health(request):
    return PlainTextResponse("up")

app = Starlette(routes=[Route("/order/{{i:int}}", order), Route("/health", health)],
                lifespan=lifespan)
"""


@pytest.mark.slow
def test_every_event_tracked_in_a_lifespan_app_arrives_once_after_sigterm(tmp_path: Path):
    """2,000 requests each track; SIGTERM to uvicorn; the collector holds each event once."""
    with serve_in_thread(tmp_path / "events.db", write_keys=[KEY]) as collector:
        (tmp_path / "shop.py").write_text(textwrap.dedent(APP.format(key=KEY, host=collector.url)))
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "shop:app",
                "--fd",
                str(listener.fileno()),
                "--log-level",
                "warning",
                "--lifespan",
                "on",
            ],
            pass_fds=[listener.fileno()],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        listener.close()
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).text == "up":
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "uvicorn did not start"
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.05)

            def send(part: range) -> list:
                with httpx.Client(base_url=base, timeout=10) as http:
                    return [http.get(f"/order/{i}").text for i in part]

            parts = [range(n, REQUESTS, 4) for n in range(4)]
            with ThreadPoolExecutor(4) as pool:
                answers = [a for chunk in pool.map(send, parts) for a in chunk]
            assert answers.count("ok") == REQUESTS
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        # uvicorn re-raises the signal once it has shut down gracefully (lifespan included).
        assert process.returncode in (0, -signal.SIGTERM), err
        report = json.loads(out.strip().splitlines()[-1])
        assert report == {
            "complete": True,
            "tracked": REQUESTS,
            "delivered": REQUESTS,
            "dropped": {},
        }
        with sqlite3.connect(collector.db_path) as db:
            rows = db.execute(
                "SELECT json_extract(body, '$.properties.i') FROM events WHERE write_key = ?",
                (KEY,),
            ).fetchall()
        values = sorted(r[0] for r in rows)
        assert values == list(range(REQUESTS))  # every request's event, each exactly once
