"""Text no store can hold (lone surrogates, NUL in ids): refused per message, on both stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from tracklane.collector import CollectorServer, serve_in_thread

# A lone surrogate can only be written as a JSON escape: these bodies are built as text.
GOOD_1 = '{"type":"track","event":"E","userId":"u1","messageId":"good-1"}'
GOOD_2 = (
    '{"type":"track","event":"E","userId":"u2","messageId":"good-2","properties":{"n":"a\\u0000b"}}'
)
BAD = [
    ('{"type":"track","event":"E","userId":"x\\ud800","messageId":"bad-1"}', "'userId'"),
    ('{"type":"track","event":"E","userId":"x\\u0000y","messageId":"bad-2"}', "'userId'"),
    ('{"type":"track","event":"E\\u0000","userId":"u","messageId":"bad-3"}', "'event'"),
    ('{"type":"track","event":"E","anonymousId":"a\\udfff","messageId":"bad-4"}', "'anonymousId'"),
    (
        '{"type":"track","event":"E","userId":"u","messageId":"bad-5","properties":{"k":["\\udc00"]}}',
        "'properties.k[0]'",
    ),
    ('{"type":"identify","userId":"u","messageId":"bad-6\\u0000"}', "'messageId'"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def collector(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CollectorServer]:
    """A collector on a SQLite file, then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        location = str(tmp_path / "events.db")
    else:
        pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
        location = request.getfixturevalue("postgres").create_database("badtext")
    with serve_in_thread(location) as server:
        yield server


def _post(server: CollectorServer, path: str, body: str) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return httpx.post(server.url + path, content=body.encode(), headers=headers, auth=("k", ""))


def _stored_ids(server: CollectorServer) -> List[str]:
    response = httpx.get(server.url + "/v1/events", params={"limit": 100}, auth=("k", ""))
    assert response.status_code == 200, response.text
    return sorted(event["messageId"] for event in response.json()["events"])


@pytest.mark.parametrize("wide_integer", [False, True])
def test_bad_text_refuses_its_message_and_keeps_the_others(
    collector: CollectorServer, wide_integer: bool
) -> None:
    """Each message with a lone surrogate or a NUL id is refused naming the field; the rest stay.

    With a 20-digit integer in the body the exact (stdlib) parser is used: same outcome.
    """
    extra = ',"n":12345678901234567890123' if wide_integer else ""
    messages = [GOOD_1, *(bad for bad, _ in BAD), GOOD_2]
    response = _post(collector, "/v1/batch", f'{{"batch":[{",".join(messages)}]{extra}}}')
    assert response.status_code == 200, response.text
    answer: Dict[str, Any] = response.json()
    assert answer["stored"] == 2
    reasons = {rejection["index"]: rejection["reason"] for rejection in answer["rejected"]}
    assert sorted(reasons) == list(range(1, len(BAD) + 1))
    for index, (_, field) in enumerate(BAD, start=1):
        assert reasons[index].startswith(field), reasons[index]
    assert "lone surrogate" in reasons[1]
    assert "NUL" in reasons[2]
    assert _stored_ids(collector) == ["good-1", "good-2"]
    # A NUL deeper in a message is ordinary JSON: kept as it was sent.
    events = httpx.get(collector.url + "/v1/events", params={"limit": 1}, auth=("k", "")).json()
    assert events["events"][0]["properties"] == {"n": "a\x00b"}
    # The debugger lists every refusal with its reason.
    refused = httpx.get(collector.url + "/debugger/api/rejected", auth=("k", "")).json()
    assert sorted(r["reason"] for r in refused["rejected"]) == sorted(reasons.values())


def test_single_message_endpoint_refuses_a_nul_user_id_with_400(
    collector: CollectorServer,
) -> None:
    """POST /v1/track with a NUL in userId gets 400 naming userId, never a 5xx."""
    response = _post(collector, "/v1/track", '{"event":"E","userId":"a\\u0000","messageId":"m"}')
    assert response.status_code == 400
    assert "'userId' contains a NUL character" in response.json()["error"]
    response = _post(collector, "/v1/identify", '{"userId":"\\ud83d","messageId":"m2"}')
    assert response.status_code == 400
    assert "'userId' contains a lone surrogate (\\ud83d)" in response.json()["error"]
    assert _stored_ids(collector) == []


def test_a_write_key_with_a_nul_is_refused_whole(collector: CollectorServer) -> None:
    """A writeKey holding NUL (body or Basic auth) is a 4xx naming it, and nothing is stored."""
    body = json.dumps({"writeKey": "k\x00", "batch": [json.loads(GOOD_1)]})
    response = httpx.post(collector.url + "/v1/batch", content=body.encode())
    assert response.status_code == 400
    assert "'writeKey' contains a NUL character" in response.json()["error"]
    assert _stored_ids(collector) == []
