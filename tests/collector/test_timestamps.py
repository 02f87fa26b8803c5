"""receivedAt, and Segment's clock-skew correction of ``timestamp``, over real HTTP."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Dict

import httpx
import pytest

from .support import MakeMessage

ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _stored(http: httpx.Client, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    [event] = http.get("/v1/events").json()["events"]
    assert isinstance(event, dict)
    return event


def test_received_at_is_server_time_in_utc_with_milliseconds(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """receivedAt is the server's clock at receipt, formatted ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)
    event = _stored(client, "/v1/batch", {"batch": [make_message()]})
    after = datetime.now(timezone.utc)
    assert ISO_MS_Z.fullmatch(event["receivedAt"])
    assert before <= _parse(event["receivedAt"]) <= after


def test_timestamp_is_corrected_by_the_batch_sent_at(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """timestamp = receivedAt - (sentAt - originalTimestamp), with the client's value kept."""
    message = make_message(timestamp="2020-01-01T00:00:00.000Z")
    body = {"batch": [message], "sentAt": "2020-01-01T00:00:10.250Z"}
    event = _stored(client, "/v1/batch", body)
    corrected = _parse(event["receivedAt"]) - timedelta(seconds=10.25)
    assert event["timestamp"] == corrected.isoformat(timespec="milliseconds")[:-6] + "Z"
    assert event["originalTimestamp"] == "2020-01-01T00:00:00.000Z"


def test_message_sent_at_is_used_without_a_batch_sent_at(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """A message's own sentAt corrects its timestamp when the batch has none."""
    message = make_message(
        timestamp="2020-01-01T00:00:00+02:00", sentAt="2020-01-01T00:01:00+02:00"
    )
    event = _stored(client, "/v1/track", message)
    assert _parse(event["receivedAt"]) - _parse(event["timestamp"]) == timedelta(minutes=1)
    assert event["originalTimestamp"] == "2020-01-01T00:00:00+02:00"


def test_batch_sent_at_wins_over_the_message_sent_at(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """With both, the batch's sentAt is the one used for the correction."""
    message = make_message(timestamp="2020-01-01T00:00:00Z", sentAt="2020-01-01T05:00:00Z")
    body = {"batch": [message], "sentAt": "2020-01-01T00:00:02Z"}
    event = _stored(client, "/v1/batch", body)
    assert _parse(event["receivedAt"]) - _parse(event["timestamp"]) == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2021-06-01T12:30:00+05:30", "2021-06-01T07:00:00.000Z"),
        ("2021-06-01T07:00:00.123456Z", "2021-06-01T07:00:00.123Z"),
        ("2021-06-01T07:00:00", "2021-06-01T07:00:00.000Z"),
        ("2021-06-01", "2021-06-01T00:00:00.000Z"),
    ],
)
def test_without_sent_at_the_timestamp_is_kept_in_utc(
    client: httpx.Client, make_message: MakeMessage, sent: str, stored: str
) -> None:
    """Without sentAt the timestamp stays as sent, normalised to UTC with milliseconds."""
    event = _stored(client, "/v1/batch", {"batch": [make_message(timestamp=sent)]})
    assert event["timestamp"] == stored
    assert event["originalTimestamp"] == sent


def test_without_timestamp_the_timestamp_is_received_at(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """A message without timestamp gets receivedAt as its timestamp and no original."""
    body = {"batch": [make_message()], "sentAt": "2020-01-01T00:00:00Z"}
    event = _stored(client, "/v1/batch", body)
    assert event["timestamp"] == event["receivedAt"]
    assert event["originalTimestamp"] is None
