"""Starlette under uvicorn with an AsyncClient opened and closed by ``asgi.lifespan()``."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import List

import pytest

from helpers import free_port
from tracklane.collector import CollectorServer

from .conftest import ServerProcess, python, stored
from .web import check_events, send_requests

pytest.importorskip("starlette", reason="the ASGI lifespan is tested with Starlette installed")

REQUESTS = 330  # six full batches of 50 on the way; the last 30 only at the lifespan's end

APP = """
import asyncio

import tracklane
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tracklane.integrations.asgi import TracklaneMiddleware, lifespan


async def make_client():
    # Built on uvicorn's loop; flush_interval=60: what is left at SIGTERM goes out only
    # because the lifespan shuts the client down.
    return tracklane.AsyncClient({write_key!r}, host={host!r}, batch_size=50, flush_interval=60)


async def checkout(request):
    await asyncio.sleep(0)  # let other requests' tasks run in between
    ok, _ = request.state.tracklane.track(
        event="Checkout", properties={{"id": request.query_params["id"]}}, anonymous_id="anon"
    )
    return PlainTextResponse("ok" if ok else "not queued", status_code=200 if ok else 500)


app = Starlette(
    routes=[Route("/checkout/", checkout)],
    middleware=[
        Middleware(
            TracklaneMiddleware,
            ip_header="X-Forwarded-For",
            user_id=lambda scope: dict(scope["headers"]).get(b"x-test-user", b"").decode() or None,
        )
    ],
    lifespan=lifespan(make_client, timeout=20),
)
"""


def test_async_client_in_the_lifespan_delivers_every_event_once_after_sigterm(
    tmp_path: Path, collector: CollectorServer, write_key: str, processes: List[ServerProcess]
) -> None:
    """lifespan(async factory) opens an AsyncClient on uvicorn's loop and shuts it down at
    SIGTERM: every request's event is at the collector exactly once, with its context."""
    (tmp_path / "shop_async.py").write_text(APP.format(write_key=write_key, host=collector.url))
    port = free_port()
    server = ServerProcess(
        [python(), "-m", "uvicorn", "--port", str(port), "shop_async:app"], tmp_path
    )
    processes.append(server)
    server.wait_for_port(port)
    sent = send_requests(port, "/checkout/", REQUESTS)
    assert len(sent) == REQUESTS
    # uvicorn re-raises the signal once it has shut down gracefully (lifespan included).
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    check_events(stored(collector, write_key, REQUESTS, timeout=0), sent, port, "/checkout/")
