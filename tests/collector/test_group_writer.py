"""The collector's SQLite writer thread: requests queued on the event loop, group-committed."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import orjson
import pytest

from tracklane.collector._group_writer import GroupWriter
from tracklane.collector._ingest import Prepared, Rejection
from tracklane.collector.storage import EventFilter, Storage, StoredMessage

from .support import row


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    """An open store on a fresh file."""
    store = Storage(tmp_path / "events.db")
    yield store
    store.close()


def _request(ids: Sequence[str], rejected: Sequence[Rejection] = ()) -> Prepared:
    return Prepared([row(message_id) for message_id in ids], list(rejected))


async def _store_all(writer: GroupWriter, requests: List[Prepared]) -> List[Dict[str, Any]]:
    answers = await asyncio.gather(*(writer.store(request) for request in requests))
    assert all(answer.status in (200, 400, 503) for answer in answers)
    return [{"status": a.status, **orjson.loads(a.body)} for a in answers]


def test_concurrent_requests_each_get_their_own_counts(storage: Storage) -> None:
    """Requests stored together report their own stored and duplicate counts: a messageId
    sent by two of them is stored once, and later requests see it as a duplicate."""
    writer = GroupWriter(storage)
    try:
        requests = [_request([f"r{n}-{i}" for i in range(50)] + ["shared"]) for n in range(8)]
        answers = asyncio.run(_store_all(writer, requests))
        again = asyncio.run(_store_all(writer, [_request(["r0-0", "new"])]))
    finally:
        writer.close()
    assert [a["status"] for a in answers] == [200] * 8
    assert sum(a["stored"] for a in answers) == 8 * 50 + 1
    assert sum(a["duplicates"] for a in answers) == 7
    assert all(a["stored"] + a["duplicates"] == 51 for a in answers)
    assert again == [{"status": 200, "success": True, "stored": 1, "duplicates": 1, "rejected": []}]
    assert storage.count(EventFilter()) == 8 * 50 + 2


def test_refused_messages_are_reported_beside_the_stored_ones(storage: Storage) -> None:
    """The answer lists a request's refused messages with their reasons."""
    refused = Rejection(1, "bad", "'userId' must be a string")
    writer = GroupWriter(storage)
    try:
        (answer,) = asyncio.run(_store_all(writer, [_request(["good"], [refused])]))
    finally:
        writer.close()
    assert answer["stored"] == 1
    assert answer["rejected"] == [refused.to_json()]


def test_a_failed_commit_answers_503_to_its_requests_and_the_next_ones_are_stored(
    storage: Storage,
) -> None:
    """When SQLite refuses a commit, each request in it gets 503 (nothing acknowledged, none
    of its rows kept), and the thread goes on storing later requests."""
    with closing(sqlite3.connect(storage.path)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.message_id = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    writer = GroupWriter(storage)
    try:
        failed = asyncio.run(_store_all(writer, [_request(["a1", "boom"])]))
        later = asyncio.run(_store_all(writer, [_request(["b1", "b2"])]))
    finally:
        writer.close()
    assert failed[0]["status"] == 503
    assert "refused by the test" in failed[0]["error"]
    assert later[0]["stored"] == 2
    assert storage.count(EventFilter()) == 2  # a1 was rolled back with boom


def test_close_stores_what_is_queued_and_refuses_what_comes_after(storage: Storage) -> None:
    """close() returns once queued requests are stored; a request after it gets 503."""
    writer = GroupWriter(storage)

    async def scenario() -> List[int]:
        pending = [asyncio.ensure_future(writer.store(_request([f"q{n}"]))) for n in range(5)]
        await asyncio.sleep(0)  # every request is queued
        await asyncio.get_running_loop().run_in_executor(None, writer.close)
        late = await writer.store(_request(["late"]))
        return [(await task).status for task in pending] + [late.status]

    statuses = asyncio.run(scenario())
    assert statuses == [200] * 5 + [503]
    assert storage.count(EventFilter()) == 5


def test_insert_gathered_counts_each_gathered_request_on_its_own(storage: Storage) -> None:
    """insert_gathered stores what gather() returns and counts each request's new rows (a
    messageId in two of them counts for the first); later inserts see them as duplicates."""
    gathered: List[Sequence[StoredMessage]] = [[row("g1"), row("g2")], [row("g2")]]
    assert storage.insert_gathered(lambda: gathered) == [2, 0]
    assert storage.insert([row("g1"), row("g3")]) == 1
    assert storage.count(EventFilter()) == 3


def test_a_group_with_an_earlier_stored_message_counts_it_for_its_own_request(
    storage: Storage,
) -> None:
    """Requests committed together count their own rows exactly, whether none of them was
    stored before or some repeat stored ones or their own, in one statement or (over 500
    rows) several."""
    assert storage.insert([row("old")]) == 1
    fresh: List[Sequence[StoredMessage]] = [
        [row(f"f{n}-{i}") for i in range(100)] for n in range(6)
    ]
    assert storage.insert_gathered(lambda: fresh) == [100] * 6
    mixed: List[Sequence[StoredMessage]] = [
        [row("m1"), row("m2")],
        [row("m3"), row("old"), row("f2-7")],
        [row("m4")],
    ]
    assert storage.insert_gathered(lambda: mixed) == [2, 1, 1]
    large: List[Sequence[StoredMessage]] = [
        [row(f"l{n}-{i}") for i in range(100)] + [row("m4"), row(f"l{n}-0")] for n in range(6)
    ]
    assert storage.insert_gathered(lambda: large) == [100] * 6
    assert storage.count(EventFilter()) == 1 + 600 + 4 + 600
