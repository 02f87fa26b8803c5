"""The wire form made by editing a stored body's text equals decoding, setting, encoding."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

import pytest

from tracklane.collector._ingest import prepare_batch
from tracklane.collector._json import dumps, loads_stored
from tracklane.collector.outbox_base import spliced_wire

RECEIVED = "2026-01-01T00:00:01.000Z"
CORRECTED = "2026-01-01T00:00:00.500Z"


def _decoded(body: str, original: Optional[str]) -> bytes:
    """The reference: what the router sent before, decoding and encoding each message."""
    message: Dict[str, Any] = loads_stored(body)
    message["receivedAt"] = RECEIVED
    message["timestamp"] = CORRECTED
    message["originalTimestamp"] = original
    return dumps(message)


def _pairs(raw: bytes) -> Any:
    """The JSON with every object as its ordered list of pairs (key order matters)."""
    return json.loads(raw, object_pairs_hook=list)


def test_bodies_stored_by_ingest_are_spliced_to_the_decoded_bytes() -> None:
    """Every message shape ingest stores is edited in place, byte for byte as re-encoding."""
    batch: List[Dict[str, Any]] = [
        {"type": "track", "userId": "u", "event": "E", "timestamp": "2025-12-31T23:59:59Z"},
        {"type": "identify", "userId": "u", "traits": {"name": "Zoë ✓", "n": 1.5e300}},
        {"type": "page", "anonymousId": "a", "name": "P", "integrations": {"All": False}},
        {"type": "track", "userId": "u", "event": "E", "properties": {"note": 'say "hi"\n'}},
        {"type": "group", "userId": "u", "groupId": "g", "context": {"ip": "1.2.3.4"}},
    ]
    prepared = prepare_batch(
        {"batch": batch, "sentAt": "2026-01-01T00:00:00Z"}, "key", datetime.now(timezone.utc)
    )
    assert not prepared.rejected
    for row in prepared.messages:
        body, original = row.body, row.original_timestamp
        spliced = spliced_wire(body, RECEIVED, CORRECTED, original)
        assert spliced is not None, body
        assert spliced == _decoded(body, original)


@pytest.mark.parametrize(
    ("body", "original"),
    [
        ('{"type":"track","properties":{"timestamp":"x"}}', None),  # the key deeper only
        ('{"type":"track","timestamp":null}', None),
        (
            '{"timestamp":"2025-01-01T00:00:00Z","properties":{"timestamp":1}}',
            "2025-01-01T00:00:00Z",
        ),
        ('{"type":"track","receivedAt":"2020-01-01T00:00:00Z"}', None),
        ('{"type":"track","originalTimestamp":"2020-01-01T00:00:00Z"}', None),
        ('{"type":"track","properties":{"a\\"timestamp":1}}', None),
        ('{"type":"track","properties":{"k":"\\"receivedAt"}}', None),
        ('{"timestamp":"2025-01-01T00:00:00Z"}', "2025-01-01T00:00:00.000Z"),  # not its text
        ('{"type":"track", "timestamp": "2025-01-01T00:00:00Z"}', "2025-01-01T00:00:00Z"),
        ("{}", None),
    ],
)
def test_a_body_the_edit_cannot_be_sure_of_is_left_to_decoding(
    body: str, original: Optional[str]
) -> None:
    """Ambiguous or unusual bodies give None (decoded instead), never a wrong wire form."""
    assert spliced_wire(body, RECEIVED, CORRECTED, original) is None


@pytest.mark.parametrize(
    ("body", "original"),
    [
        ('{"type":"track","properties":{"n":123456789012345678901234567890}}', None),
        (
            '{"type":"track","timestamp":"2025-01-01T00:00:00Z","s":"\\u00e9\\ud800"}',
            "2025-01-01T00:00:00Z",
        ),
        ('{"type":"track","properties":{"text":"\\"timestamp\\":1"}}', None),
    ],
)
def test_escapes_and_wide_integers_are_kept_as_stored(body: str, original: Optional[str]) -> None:
    """The edited text is the decoded JSON, keys in the same order, escapes as stored."""
    spliced = spliced_wire(body, RECEIVED, CORRECTED, original)
    assert spliced is not None
    assert _pairs(spliced) == _pairs(_decoded(body, original))
    assert spliced.startswith(
        body[:-1].replace('"2025-01-01T00:00:00Z"', f'"{CORRECTED}"').encode()
    )
