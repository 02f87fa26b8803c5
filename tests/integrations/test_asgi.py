"""FastAPI under uvicorn: the middleware's request context and the lifespan's shutdown."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import List

import pytest

from helpers import free_port
from tracklane.collector import CollectorServer

from .conftest import ServerProcess, python, stored
from .web import check_events, send_requests

pytest.importorskip("fastapi", reason="the ASGI integration is tested with FastAPI installed")

APP = """
import asyncio

import tracklane
from fastapi import FastAPI, Request

from tracklane.integrations.asgi import TracklaneMiddleware, lifespan


def make_client():
    # flush_interval=60: only the lifespan's shutdown delivers what is queued at the end.
    return tracklane.Client({write_key!r}, host={host!r}, flush_interval=60)


app = FastAPI(lifespan=lifespan(make_client))
app.add_middleware(
    TracklaneMiddleware,
    ip_header="X-Forwarded-For",
    user_id=lambda scope: dict(scope["headers"]).get(b"x-test-user", b"").decode() or None,
)


@app.get("/checkout/")
async def checkout(request: Request, id: str):
    await asyncio.sleep(0)  # let other requests' tasks run in between
    request.state.tracklane.track(event="Checkout", properties={{"id": id}}, anonymous_id="anon")
    return "ok"


@app.get("/checkout-sync/")
def checkout_sync(request: Request, id: str):  # runs in a worker thread
    request.state.tracklane.track(event="Checkout", properties={{"id": id}}, anonymous_id="anon")
    return "ok"
"""


@pytest.mark.parametrize("path", ["/checkout/", "/checkout-sync/"])
def test_fastapi_under_uvicorn_puts_request_context_on_events(
    tmp_path: Path,
    collector: CollectorServer,
    write_key: str,
    processes: List[ServerProcess],
    path: str,
) -> None:
    """Async and threaded endpoints' events carry their own request's context; the lifespan
    shuts the client down, so what was queued at SIGTERM is delivered."""
    (tmp_path / "shop_api.py").write_text(APP.format(write_key=write_key, host=collector.url))
    port = free_port()
    server = ServerProcess(
        [python(), "-m", "uvicorn", "--port", str(port), "shop_api:app"], tmp_path
    )
    processes.append(server)
    server.wait_for_port(port)
    sent = send_requests(port, path, 30)
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    check_events(stored(collector, write_key, len(sent)), sent, port, path)


BARE_APP = """
import tracklane
from fastapi import FastAPI

tracklane.write_key = {write_key!r}
tracklane.host = {host!r}
tracklane.flush_interval = 60

app = FastAPI()  # no lifespan helper: only tracklane's own exit flush could send


@app.get("/checkout/")
async def checkout(id: str):
    tracklane.track("u", "Checkout", {{"id": id}})
    return "ok"
"""


def test_without_the_lifespan_uvicorn_loses_what_is_queued(
    tmp_path: Path, collector: CollectorServer, write_key: str, processes: List[ServerProcess]
) -> None:
    """Why the lifespan helper exists: uvicorn dies by re-raising SIGTERM, skipping atexit."""
    (tmp_path / "bare_api.py").write_text(BARE_APP.format(write_key=write_key, host=collector.url))
    port = free_port()
    server = ServerProcess(
        [python(), "-m", "uvicorn", "--port", str(port), "bare_api:app"], tmp_path
    )
    processes.append(server)
    server.wait_for_port(port)
    sent = send_requests(port, "/checkout/", 5)
    assert len(sent) == 5
    assert server.stop() == -signal.SIGTERM, server.output()
    # The process is gone and had made no request (5 events, batches of 100, 60 s interval).
    assert stored(collector, write_key, 1, timeout=0) == []
