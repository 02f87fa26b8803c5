"""Usage of the public API that must pass ``mypy --strict`` (checked by ``make test``)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Dict, List

import tracklane
from tracklane.testing import CapturingClient, capture


def on_error(exc: BaseException, batch: List[Dict[str, Any]]) -> None:
    print(type(exc).__name__, len(batch))


def main() -> None:
    client = tracklane.Client(
        "key",
        host="http://127.0.0.1:8787",
        on_error=on_error,
        batch_size=50,
        flush_interval=0.2,
        overflow="drop_oldest",
    )
    queued, message = client.track("u", "Event", {"price": Decimal("1.5")})
    assert isinstance(queued, bool)
    assert message["type"] == "track"
    client.identify("u", {"name": "Ada"}, timestamp=dt.datetime.now(dt.timezone.utc))
    result: tracklane.FlushResult = client.flush(timeout=1.0)
    stats: tracklane.Stats = result.stats
    dropped: int = stats.dropped_total + stats.dropped.get(tracklane.DropReason.QUEUE_FULL.value, 0)
    print(dropped, stats.pending)
    client.shutdown(timeout=1)

    tracklane.write_key = "key"
    tracklane.track("u", "Module level")
    tracklane.flush()

    with capture() as events:
        tracklane.track("u", "Captured")
    events.assert_tracked("Captured", user_id="u")
    capturing = CapturingClient()
    capturing.page("u", "Docs", "Home")
    assert len(capturing.events.of_type("page")) == 1

    try:
        client.track(None, "No id")
    except tracklane.ValidationError as exc:
        print(exc.field)


async def async_main() -> None:
    from tracklane.testing import CapturingAsyncClient
    from tracklane.transports import SendResult

    async with tracklane.AsyncClient("key", host="http://127.0.0.1:8787", on_error=on_error) as ac:
        queued, message = ac.track("u", "Event", {"n": 1})
        assert isinstance(queued, bool)
        assert message["event"] == "Event"
        delivered, sent = await ac.deliver.identify("u", {"name": "Ada"})
        assert isinstance(delivered, bool)
        assert sent["type"] == "identify"
        flushed: tracklane.FlushResult = await ac.flush(timeout=1.0)
        print(flushed.complete, ac.stats().pending)
    capturing = CapturingAsyncClient()
    capturing.track("u", "Captured")
    capturing.events.assert_tracked("Captured")
    result = SendResult(status=200)
    assert result.ok
