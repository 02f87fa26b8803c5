"""Whole-request refusals over real HTTP: sizes, bad JSON, bad gzip, each a 400 saying why."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any, Dict

import httpx
import pytest

from .support import MakeMessage


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _batch_of_size(make_message: MakeMessage, size: int) -> bytes:
    """A valid batch body of exactly ``size`` bytes (messages padded under 32 KB each)."""
    batch = [make_message(properties={"pad": "x" * 30_000}) for _ in range(size // 31_000 + 1)]
    body: Dict[str, Any] = {"batch": batch}
    batch[-1]["properties"]["pad"] = ""
    batch[-1]["properties"]["pad"] = "x" * (size - len(_compact(body)))
    raw = _compact(body)
    assert len(raw) == size
    return raw


def _error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False
    error = body["error"]
    assert isinstance(error, str)
    return error


def _count(http: httpx.Client) -> int:
    count = http.get("/v1/events/count").json()["count"]
    assert isinstance(count, int)
    return count


def test_request_of_exactly_500000_bytes_is_accepted(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """The request limit is inclusive: a 500,000-byte batch is stored."""
    response = client.post("/v1/batch", content=_batch_of_size(make_message, 500_000))
    assert response.status_code == 200, response.text
    assert response.json()["rejected"] == []


@pytest.mark.parametrize("gzipped", [False, True])
def test_request_over_500000_bytes_gets_400_and_stores_nothing(
    client: httpx.Client, make_message: MakeMessage, gzipped: bool
) -> None:
    """A batch body of 500,001 bytes (plain or once inflated) gets 400 and stores nothing."""
    raw = _batch_of_size(make_message, 500_001)
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    content = gzip.compress(raw) if gzipped else raw
    error = _error(client.post("/v1/batch", content=content, headers=headers))
    assert "request body is over the 500000-byte limit" in error
    assert _count(client) == 0


def test_much_larger_request_is_refused_from_content_length(client: httpx.Client) -> None:
    """A body far over the limit is answered with 400 (the client still gets the response)."""
    error = _error(client.post("/v1/batch", content=b"[" + b" " * 5_000_000 + b"]"))
    assert error == "request body is over the 500000-byte limit"


def test_compressed_body_read_is_capped(client: httpx.Client) -> None:
    """Incompressible gzip data is refused once the compressed bytes pass the cap."""
    content = gzip.compress(os.urandom(700_000))
    error = _error(client.post("/v1/batch", content=content, headers={"Content-Encoding": "gzip"}))
    assert "over the 500000-byte limit" in error


def test_single_message_over_32768_bytes_gets_400(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """A single-message request over 32,768 bytes gets 400 and stores nothing."""
    message = make_message(properties={"pad": "x" * 33_000})
    error = _error(client.post("/v1/track", json=message))
    assert error == "message is over the 32768-byte limit"
    assert _count(client) == 0


def test_single_message_gzip_bomb_gets_400(client: httpx.Client) -> None:
    """A gzipped single message that inflates past 32,768 bytes gets 400."""
    content = gzip.compress(b" " * 10_000_000)
    error = _error(client.post("/v1/track", content=content, headers={"Content-Encoding": "gzip"}))
    assert error == "message is over the 32768-byte limit (inflated)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"batch": [', "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b'{"batch": [], "n": NaN}', "invalid JSON"),
        (b'{"batch": [], "n": 1e400, "id": 12345678901234567890}', "invalid JSON"),
        (b"", "request body is empty"),
        (b"[]", "request body must be a JSON object"),
        (b'{"events": []}', "request body must have a 'batch' array of messages"),
        (b'{"batch": {}}', "request body must have a 'batch' array of messages"),
        (b'{"batch": [], "sentAt": "soon"}', "'sentAt' is not an ISO-8601 time"),
        (b'{"batch": [], "writeKey": 5}', "'writeKey' must be a string"),
    ],
)
def test_malformed_body_gets_400_saying_what_is_wrong(
    client: httpx.Client, content: bytes, message: str
) -> None:
    """Invalid JSON or a body of the wrong shape gets 400 naming the problem."""
    assert message in _error(client.post("/v1/batch", content=content))


def test_invalid_json_on_single_endpoint_gets_400(client: httpx.Client) -> None:
    """A single-message endpoint also refuses invalid JSON with 400."""
    assert _error(client.post("/v1/identify", content=b"{oops")).startswith("invalid JSON")


@pytest.mark.parametrize(
    ("content", "encoding", "message"),
    [
        (b"not gzip at all", "gzip", "invalid gzip body"),
        (gzip.compress(b'{"batch": []}')[:-12], "gzip", "invalid gzip body"),
        (b'{"batch": []}', "br", "unsupported Content-Encoding 'br'"),
    ],
)
def test_bad_content_encoding_gets_400(
    client: httpx.Client, content: bytes, encoding: str, message: str
) -> None:
    """Corrupt or truncated gzip, or an unsupported encoding, gets 400."""
    headers = {"Content-Encoding": encoding}
    assert message in _error(client.post("/v1/batch", content=content, headers=headers))


def test_multi_member_gzip_is_inflated_whole(
    client: httpx.Client, make_message: MakeMessage
) -> None:
    """A gzip body made of several members (concatenated streams) is read in full."""
    raw = _compact({"batch": [make_message()]})
    content = gzip.compress(raw[:10]) + gzip.compress(raw[10:])
    response = client.post("/v1/batch", content=content, headers={"Content-Encoding": "gzip"})
    assert response.json()["stored"] == 1
