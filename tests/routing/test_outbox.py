"""The SQLite outbox's contract: claims, leases, settlements, dead letters, restarts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

from tracklane.collector.outbox import DeadLetter, Retry, Settlement, SQLiteOutbox
from tracklane.collector.storage import Storage, StoredMessage


def _store(storage: Storage, count: int, start: int = 0) -> None:
    rows: List[StoredMessage] = [
        StoredMessage(
            "key",
            f"m-{i}",
            "track",
            "u",
            None,
            "E",
            "2026-01-01T00:00:00.000Z",
            "2026-01-01T00:00:00.000Z",
            None,
            f'{{"type":"track","messageId":"m-{i}"}}',
        )
        for i in range(start, start + count)
    ]
    storage.insert(rows)


def test_claims_advance_lease_and_settle(tmp_path: Path) -> None:
    """Claims take new events in order, never twice while leased; settled rows are gone."""
    storage = Storage(tmp_path / "events.db")
    _store(storage, 3)  # before the destination exists: not sent to it
    outbox = SQLiteOutbox(storage)
    outbox.register(["D"])
    assert outbox.claim("D", 10) is None
    _store(storage, 25, start=3)
    first = outbox.claim("D", 10)
    second = outbox.claim("D", 10)
    assert first is not None
    assert second is not None
    ids = [e.message["messageId"] for e in outbox.events(first)]
    assert ids == [f"m-{i}" for i in range(3, 13)]
    assert next(e.message["messageId"] for e in outbox.events(second)) == "m-13"
    outbox.settle(first, Settlement(delivered=10))
    (status,) = outbox.status([("D", "webhook")])
    assert status.delivered == 10
    assert status.pending == 15  # the second claim (10) and 5 not yet claimed
    outbox.close()
    storage.close()


def test_failures_come_back_when_due_and_dead_letters_replay(tmp_path: Path) -> None:
    """A retry is claimable only from its due time; a dead letter is listed and replayable."""
    storage = Storage(tmp_path / "events.db")
    outbox = SQLiteOutbox(storage)
    outbox.register(["D"])
    _store(storage, 2)
    claim = outbox.claim("D", 10)
    assert claim is not None
    first, second = outbox.events(claim)
    due = time.time() + 60
    outbox.settle(
        claim,
        Settlement(
            retries=[Retry(first.id, 1, due, "HTTP 503")],
            dead=[DeadLetter(second.id, 1, "HTTP 422: bad")],
        ),
    )
    assert outbox.claim("D", 10) is None  # the retry is not due yet
    retry = outbox.claim("D", 10, now=due + 1)
    assert retry is not None
    (event,) = outbox.events(retry)
    assert (event.message["messageId"], event.attempts) == ("m-0", 1)
    (dead,) = outbox.dead_letters("D")
    assert (dead.message_id, dead.error, dead.attempts) == ("m-1", "HTTP 422: bad", 1)
    assert outbox.replay("D") == 1
    assert outbox.dead_letters("D") == []
    replayed = outbox.claim("D", 10)
    assert replayed is not None
    assert [e.message["messageId"] for e in outbox.events(replayed)] == ["m-1"]
    outbox.close()
    storage.close()


def test_a_restart_releases_the_leases_of_the_dead_process(tmp_path: Path) -> None:
    """Work claimed and never settled is claimed again by the next collector on the file."""
    storage = Storage(tmp_path / "events.db")
    outbox = SQLiteOutbox(storage)
    outbox.register(["D"])
    _store(storage, 4)
    assert outbox.claim("D", 10) is not None  # then the process "dies"
    outbox.close()
    storage.close()
    storage = Storage(tmp_path / "events.db")
    again = SQLiteOutbox(storage)
    again.register(["D"])
    claim = again.claim("D", 10)
    assert claim is not None
    assert len(again.events(claim)) == 4
    again.close()
    storage.close()
