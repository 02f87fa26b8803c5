"""The ASGI lifespan helpers shut the client down when the server stops."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import pytest

import tracklane
from helpers import RecordingServer
from tracklane.integrations.asgi import ClientLifespan, lifespan


async def _run_lifespan(app: Any) -> List[str]:
    """Play a server's part: startup, then shutdown; return what the app answered."""
    inbox: asyncio.Queue[Dict[str, Any]] = asyncio.Queue()
    answers: List[str] = []

    async def receive() -> Dict[str, Any]:
        return await inbox.get()

    async def send(message: Dict[str, Any]) -> None:
        answers.append(message["type"])

    await inbox.put({"type": "lifespan.startup"})
    await inbox.put({"type": "lifespan.shutdown"})
    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return answers


def test_starlette_lifespan_builds_and_shuts_down_a_client(server: RecordingServer) -> None:
    """lifespan(factory) builds the client at startup, exposes it, and shuts it down at exit."""
    starlette = pytest.importorskip("starlette.applications", reason="needs Starlette")
    made: List[tracklane.Client] = []

    def factory() -> tracklane.Client:
        client = tracklane.Client("k", host=server.url, flush_interval=60)
        client.track("u", "Booted", {})
        made.append(client)
        return client

    app = starlette.Starlette(lifespan=lifespan(factory))
    answers = asyncio.run(_run_lifespan(app))
    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert [m["event"] for m in server.accepted()] == ["Booted"], "delivered at shutdown"
    assert made[0].stats().pending == 0
    assert made[0].track("u", "Late", {})[0] is False, "the client is shut down"


def test_lifespan_accepts_an_async_factory_and_a_client(server: RecordingServer) -> None:
    """An async factory is awaited; a client given as is is shut down at exit."""
    starlette = pytest.importorskip("starlette.applications", reason="needs Starlette")
    client = tracklane.Client("k", host=server.url, flush_interval=60)

    async def factory() -> tracklane.Client:
        return client

    for given in (factory, client):
        client.track("u", "Queued", {})
        app = starlette.Starlette(lifespan=lifespan(given, timeout=5))
        asyncio.run(_run_lifespan(app))
    assert [m["event"] for m in server.accepted()] == ["Queued"], "the second one was refused"


def test_client_lifespan_answers_for_an_app_that_refuses_lifespan(
    server: RecordingServer,
) -> None:
    """Wrapped around an app that raises on lifespan (like Django's), the wrapper answers."""
    client = tracklane.Client("k", host=server.url, flush_interval=60)

    async def django_like(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")

    client.track("u", "Queued", {})
    answers = asyncio.run(_run_lifespan(ClientLifespan(django_like, client)))
    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert [m["event"] for m in server.accepted()] == ["Queued"]


def test_client_lifespan_keeps_the_apps_own_lifespan(server: RecordingServer) -> None:
    """With an app that runs its own lifespan, both run: the client is shut down before
    the app's shutdown.complete reaches the server."""
    client = tracklane.Client("k", host=server.url, flush_interval=60)
    seen: List[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    client.track("u", "Queued", {})
    answers = asyncio.run(_run_lifespan(ClientLifespan(app, lambda: client)))
    assert seen == ["lifespan.startup", "lifespan.shutdown"]
    assert answers == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert [m["event"] for m in server.accepted()] == ["Queued"]


def test_lifespan_awaits_a_client_whose_shutdown_is_a_coroutine() -> None:
    """A client with ``async def shutdown`` (an AsyncClient) is awaited, with the timeout."""
    calls: List[Any] = []

    class AwaitableShutdown:
        def track(self, *args: Any) -> None:  # marks it as a client, not a factory
            pass

        async def shutdown(self, timeout: Any = None) -> None:
            await asyncio.sleep(0)
            calls.append(timeout)

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("no lifespan")

    asyncio.run(_run_lifespan(ClientLifespan(refuse, AwaitableShutdown(), timeout=1.5)))
    assert calls == [1.5]
