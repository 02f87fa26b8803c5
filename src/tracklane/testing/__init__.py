"""Assert what your own code tracked: no network, no mocks.

``CapturingClient`` is a real :class:`tracklane.Client` (same validation, same encoding)
whose transport keeps every message instead of sending it; ``capture()`` swaps it in as
the module-level default client for the duration of a ``with`` block::

    from tracklane.testing import capture

    with capture() as events:
        signup("user-1")          # calls tracklane.track(...) somewhere inside
    events.assert_tracked("Signed Up", user_id="user-1", properties={"plan": "pro"})

With pytest, the ``tracklane_events`` fixture does the same for one test.

``CapturingAsyncClient`` is the same for code that uses :class:`tracklane.AsyncClient`:
hand it to the code under test where it would build its own client (a FastAPI dependency,
an app factory); ``client.events`` holds each message as soon as the call returns.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional

import orjson

import tracklane
from tracklane._aio_client import AsyncClient
from tracklane._client import Client
from tracklane._core.batching import batch_body
from tracklane.messages import coerce_id, now_timestamp
from tracklane.transports import SendResult

__all__ = [
    "AsyncMemoryTransport",
    "CapturedEvents",
    "CapturingAsyncClient",
    "CapturingClient",
    "MemoryTransport",
    "capture",
]


class MemoryTransport:
    """A transport that records request bodies and answers 200 (or scripted statuses)."""

    def __init__(self, statuses: Optional[List[int]] = None) -> None:
        self._lock = threading.Lock()
        self.bodies: List[bytes] = []
        self._statuses = list(statuses or [])

    def send(self, body: bytes, timeout: float) -> SendResult:
        """Record ``body``; answer the next scripted status, or 200."""
        with self._lock:
            self.bodies.append(body)
            status = self._statuses.pop(0) if self._statuses else 200
        return SendResult(status=status, body="" if status < 300 else '{"error":"scripted"}')

    def close(self) -> None:
        """Nothing to close."""

    def messages(self) -> List[Dict[str, Any]]:
        """Every message of every recorded request, in order."""
        with self._lock:
            bodies = list(self.bodies)
        out: List[Dict[str, Any]] = []
        for body in bodies:
            out.extend(orjson.loads(body)["batch"])
        return out


class AsyncMemoryTransport(MemoryTransport):
    """The asyncio twin of :class:`MemoryTransport` (for ``AsyncClient(transport=...)``)."""

    async def send(self, body: bytes, timeout: float) -> SendResult:  # type: ignore[override]
        """Record ``body``; answer the next scripted status, or 200."""
        return MemoryTransport.send(self, body, timeout)

    async def aclose(self) -> None:
        """Nothing to close."""


class CapturedEvents:
    """The messages a capturing client accepted, with assertion helpers."""

    def __init__(self, transport: MemoryTransport, decimal_as: str = "string") -> None:
        self._transport = transport
        self._decimal_as = decimal_as

    @property
    def messages(self) -> List[Dict[str, Any]]:
        """Every captured message, in wire form (camelCase keys, converted values)."""
        return self._transport.messages()

    def of_type(self, kind: str) -> List[Dict[str, Any]]:
        """The captured messages of one type (``"track"``, ``"identify"``, ...)."""
        return [m for m in self.messages if m["type"] == kind]

    def tracked(self, event: Optional[str] = None) -> List[Dict[str, Any]]:
        """The captured ``track`` messages, optionally only those of one event name."""
        return [m for m in self.of_type("track") if event is None or m["event"] == event]

    def clear(self) -> None:
        """Forget everything captured so far."""
        with self._transport._lock:
            self._transport.bodies.clear()

    def assert_tracked(
        self,
        event: str,
        user_id: Optional[str] = None,
        properties: Optional[Mapping[str, Any]] = None,
        times: Optional[int] = None,
    ) -> List[Dict[str, Any]]:
        """Assert ``event`` was tracked (for ``user_id``, with at least ``properties``).

        ``properties`` are compared in wire form: a ``Decimal`` arrives as a string (a number
        with ``decimal_as="number"``), a datetime as ISO-8601 text. Returns the matching
        messages.
        """
        matches = [
            m
            for m in self.tracked(event)
            if (user_id is None or m.get("userId") == coerce_id("user_id", user_id))
            and _contains(m.get("properties") or {}, properties or {}, self._decimal_as)
        ]
        if times is not None and len(matches) != times:
            raise AssertionError(
                f"expected {event!r} tracked {times} time(s), found {len(matches)}; "
                f"tracked events: {[m['event'] for m in self.tracked()]}"
            )
        if not matches and times != 0:
            raise AssertionError(
                f"{event!r} was not tracked with user_id={user_id!r} and "
                f"properties ⊇ {dict(properties or {})!r}; "
                f"tracked: {[(m['event'], m.get('userId')) for m in self.tracked()]}"
            )
        return matches

    def assert_not_tracked(self, event: str) -> None:
        """Assert no ``track`` message for ``event`` was captured."""
        found = self.tracked(event)
        if found:
            raise AssertionError(f"{event!r} was tracked {len(found)} time(s)")

    def __len__(self) -> int:
        return len(self.messages)


def _contains(actual: Mapping[str, Any], expected: Mapping[str, Any], decimal_as: str) -> bool:
    wire = orjson.loads(tracklane._encode.encode(dict(expected), decimal_as=decimal_as))
    return all(k in actual and actual[k] == v for k, v in wire.items())


class CapturingClient(Client):
    """A :class:`tracklane.Client` that captures messages in memory instead of sending them.

    Validation, conversions and size limits are the real ones; delivery is immediate
    (``sync_mode``), so ``events`` holds a message as soon as the call returns.
    """

    def __init__(self, write_key: str = "test-write-key", **options: Any) -> None:
        self.transport = MemoryTransport()
        options.setdefault("host", "http://127.0.0.1")
        options["sync_mode"] = True
        super().__init__(write_key, transport=self.transport, **options)
        self.events = CapturedEvents(self.transport, self.options.decimal_as)


class CapturingAsyncClient(AsyncClient):
    """A :class:`tracklane.AsyncClient` that captures messages in memory instead of sending.

    Validation, conversions and size limits are the real ones. Each call's message is
    captured before the call returns (no task, no flush needed); ``await
    client.deliver.track(...)`` captures too.
    """

    def __init__(self, write_key: str = "test-write-key", **options: Any) -> None:
        self.transport = AsyncMemoryTransport()
        options.setdefault("host", "http://127.0.0.1")
        super().__init__(write_key, transport=self.transport, **options)
        self.events = CapturedEvents(self.transport)
        self._put = self._capture

    def _capture(self, data: bytes) -> bool:
        accepted = self._pipeline.count_stubbed(data)
        with self.transport._lock:
            self.transport.bodies.append(batch_body([data], now_timestamp()))
        return accepted


@contextmanager
def capture(**options: Any) -> Iterator[CapturedEvents]:
    """Make the module-level client a :class:`CapturingClient` inside the block."""
    client = CapturingClient(**options)
    with tracklane._default_lock:
        previous = tracklane.default_client
        tracklane.default_client = client
    try:
        yield client.events
    finally:
        with tracklane._default_lock:
            tracklane.default_client = previous
