"""Usage of the public API that must pass ``mypy --strict`` (checked by ``make test``)."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional, Tuple

import orjson

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
    forwarded, as_sent = client.forward({"type": "track", "userId": "u", "event": "Replayed"})
    assert isinstance(forwarded, bool)
    line = b'{"type":"track","userId":"u","event":"Replayed"}'
    forwarded, as_sent = client.forward(orjson.loads(line), encoded=line)
    assert as_sent["event"] == "Replayed"
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


def module_api() -> None:
    """The module functions have Client's signatures; the settings have types."""
    tracklane.write_key = "key"
    tracklane.host = "http://127.0.0.1:8787"
    tracklane.gzip = True
    tracklane.on_error = on_error
    tracklane.upload_size = 50
    tracklane.decimal_as = "number"
    tracklane.oauth_client_id = None
    queued, message = tracklane.track(
        user_id="u", event="E", properties={"a": 1}, timestamp=dt.datetime.now(), message_id="m"
    )
    ok: bool = tracklane.identify("u", {"name": "Ada"}, anonymous_id="a")[0]
    tracklane.page("u", "Docs", "Home", {"url": "https://example.com"})
    tracklane.screen("u", "App", "Home", context={"ip": "10.0.0.1"})
    tracklane.group("u", "acme", {"employees": 10}, integrations={"All": True})
    tracklane.alias("old-id", "new-id")
    result: tracklane.FlushResult = tracklane.flush(timeout=1.0)
    tracklane.join()
    tracklane.shutdown(timeout=1.0)
    default: Optional[tracklane.Client] = tracklane.default_client
    call: Callable[..., Tuple[bool, Dict[str, Any]]] = tracklane.track
    print(queued, message, ok, result, default, call)
    # Real signatures, not (*args, **kwargs): mypy rejects these calls. Under --strict an
    # ignore that silenced nothing is itself an error, so these lines prove the rejection.
    tracklane.track("u", "E", propertys={})  # type: ignore[call-arg]
    tracklane.track("u", "E", properties="not a mapping")  # type: ignore[arg-type]
    tracklane.alias("a", "b", None, None, None, None, None)  # type: ignore[call-arg]
    tracklane.flush(timeout="soon")  # type: ignore[arg-type]
    tracklane.gzip = "yes"  # type: ignore[assignment]


def segment_attributes(client: tracklane.Client) -> None:
    """segment-analytics-python's Client attributes, typed and read-only."""
    key: str = client.write_key
    host: Optional[str] = client.host
    flags: Tuple[bool, bool, bool, bool] = (
        client.debug,
        client.gzip,
        client.send,
        client.sync_mode,
    )
    limits: Tuple[float, int] = (client.timeout, client.max_retries)
    client.log.setLevel(logging.WARNING)
    print(key, host, flags, limits, client.on_error, client.proxies)
    client.gzip = True  # type: ignore[misc]


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
        queued, message = ac.forward({"type": "identify", "anonymousId": "a"})
        delivered, sent = await ac.deliver.forward({"type": "page", "userId": "u"})
        flushed: tracklane.FlushResult = await ac.flush(timeout=1.0)
        print(flushed.complete, ac.stats().pending)
    capturing = CapturingAsyncClient()
    capturing.track("u", "Captured")
    capturing.events.assert_tracked("Captured")
    result = SendResult(status=200)
    assert result.ok
