"""flush_after: a handler's events leave before it returns, within the invocation's time."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict

import pytest

import tracklane
from helpers import Action, RecordingServer
from tracklane.integrations.serverless import flush_after


class LambdaContext:
    """What AWS Lambda passes as ``context``: the time left, counting down."""

    def __init__(self, remaining_ms: float) -> None:
        self.ends = time.monotonic() + remaining_ms / 1000
        self.function_name = "shop-handler"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.ends - time.monotonic()) * 1000))


def _configure(server: RecordingServer) -> None:
    tracklane.write_key = "lambda-key"
    tracklane.host = server.url
    tracklane.flush_interval = 60  # nothing would leave by itself before the freeze


def test_events_are_delivered_before_the_handler_returns(
    server: RecordingServer, default_settings: None
) -> None:
    """When the handler returns, its events are already at the server."""
    _configure(server)

    @flush_after
    def handler(event: Dict[str, Any], context: Any) -> str:
        for i in range(3):
            tracklane.track("u", "Invoked", {"n": i, "request": event["id"]})
        return "done"

    assert handler({"id": "a"}, LambdaContext(30_000)) == "done"
    assert [m["properties"]["n"] for m in server.accepted()] == [0, 1, 2]


def test_events_are_delivered_when_the_handler_raises(
    server: RecordingServer, default_settings: None
) -> None:
    """A handler that raises still flushes, and its exception reaches the caller."""
    _configure(server)

    @flush_after(timeout=2)
    def handler(event: Any, context: Any) -> None:
        tracklane.track("u", "Failed", {})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        handler({}, LambdaContext(30_000))
    assert [m["event"] for m in server.accepted()] == ["Failed"]


def test_flush_is_cut_to_the_remaining_time(
    server: RecordingServer, default_settings: None
) -> None:
    """With 1.2 s left and a collector that hangs, the handler returns before time is up."""
    _configure(server)
    server.respond(Action(hang=True))

    @flush_after  # timeout 5 s by default: far more than the invocation has left
    def handler(event: Any, context: Any) -> str:
        tracklane.track("u", "Slow", {})
        return "done"

    context = LambdaContext(1_200)
    assert handler({}, context) == "done"
    assert context.get_remaining_time_in_millis() > 0, "returned before the platform's deadline"
    stats = tracklane.stats()
    assert stats is not None
    assert stats.pending == 1, "the event is still pending, not lost"
    server.release.set()


def test_async_handler_flushes_before_returning(
    server: RecordingServer, default_settings: None
) -> None:
    """An async handler, and a client of its own, are flushed before it returns."""
    _configure(server)
    own = tracklane.Client("own-key", host=server.url, flush_interval=60)

    @flush_after(clients=[own])
    async def handler(event: Any, context: Any) -> str:
        await asyncio.sleep(0)
        tracklane.track("u", "Default", {})
        own.track("u", "Own", {})
        return "done"

    try:
        assert asyncio.run(handler({}, LambdaContext(30_000))) == "done"
        assert sorted(m["event"] for m in server.accepted()) == ["Default", "Own"]
    finally:
        own.shutdown(1)


def test_without_a_context_object_the_timeout_bounds_the_flush(
    server: RecordingServer, default_settings: None
) -> None:
    """A handler called without a Lambda context flushes within ``timeout``."""
    _configure(server)
    server.respond(Action(hang=True))

    @flush_after(timeout=0.3)
    def handler() -> str:
        tracklane.track("u", "E", {})
        return "done"

    started = time.monotonic()
    assert handler() == "done"
    assert time.monotonic() - started < 3, "bounded by timeout=0.3, not the 5 s default"
    server.release.set()
