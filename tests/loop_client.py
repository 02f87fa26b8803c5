"""Drive an ``AsyncClient`` from a test's thread, so one behaviour test runs on both clients.

The client lives on an event loop running in a thread of its own; every call (``track``,
``flush``, ...) is made *on that loop*, as an application's coroutine would make it, and
the test's thread waits for its result. ``flush``/``shutdown`` are awaited there.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, Optional, TypeVar

import tracklane

T = TypeVar("T")
CALLS = ("track", "identify", "page", "screen", "group", "alias", "forward")


class LoopClient:
    """A synchronous face for a real ``tracklane.AsyncClient`` on a real loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> tracklane.AsyncClient:
            return tracklane.AsyncClient(*args, **kwargs)

        self.client = self.run(make())
        self.options = self.client.options

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the client's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` on the client's loop (exceptions come back to the caller)."""

        async def call() -> T:
            return fn(*args, **kwargs)

        return self.run(call())

    def __getattr__(self, name: str) -> Any:
        if name in CALLS:
            method = getattr(self.client, name)
            return lambda *a, **k: self.on_loop(method, *a, **k)
        raise AttributeError(name)

    def flush(self, timeout: Optional[float] = None) -> tracklane.FlushResult:
        return self.run(self.client.flush(timeout))

    def shutdown(self, timeout: Optional[float] = None) -> tracklane.FlushResult:
        return self.run(self.client.shutdown(timeout))

    def join(self, timeout: Optional[float] = None) -> tracklane.FlushResult:
        return self.run(self.client.join(timeout))

    def close(self) -> tracklane.FlushResult:
        return self.run(self.client.close())

    def stats(self) -> tracklane.Stats:
        return self.client.stats()

    def __enter__(self) -> LoopClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def stop(self) -> None:
        """Stop and close the loop (after the client was shut down)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
