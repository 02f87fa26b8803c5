"""Constants and types shared by the collector tests."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import httpx

from tracklane.collector.storage import StoredMessage

KEYS = ("key-alpha", "key-beta")  # the write keys of the ``keyed_server`` fixture
Message = Dict[str, Any]
MakeMessage = Callable[..., Message]


def list_events(http: httpx.Client, **params: Any) -> List[Message]:
    """``GET /v1/events`` with ``params`` (as the client's write key): the events, checked 200."""
    response = http.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    events = response.json()["events"]
    assert isinstance(events, list)
    return events


def count_events(http: httpx.Client, **params: Any) -> int:
    """``GET /v1/events/count`` with ``params``: the count, checked 200."""
    response = http.get("/v1/events/count", params=params)
    assert response.status_code == 200, response.text
    count = response.json()["count"]
    assert isinstance(count, int)
    return count


def row(message_id: str, **fields: Any) -> StoredMessage:
    """A stored-message row with sensible defaults."""
    values: dict[str, Any] = {
        "write_key": "k",
        "message_id": message_id,
        "type": "track",
        "user_id": "ann",
        "anonymous_id": None,
        "event": "Clicked",
        "received_at": "2024-05-01T10:00:00.000Z",
        "timestamp": "2024-05-01T09:59:59.000Z",
        "original_timestamp": None,
        "body": f'{{"type":"track","messageId":"{message_id}"}}',
    }
    values.update(fields)
    return StoredMessage(**values)
