"""The outbox contract (SQLite and PostgreSQL): claims, leases, settlements, dead letters."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from tracklane.collector.outbox import DeadLetter, Outbox, Retry, Settlement, SQLiteOutbox
from tracklane.collector.storage import Storage, StoredMessage
from tracklane.collector.stores import EventStore

Opened = Tuple[EventStore, Callable[[], Outbox]]


@pytest.fixture(params=["sqlite", "postgres"])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opened]:
    """A store and a way to open outboxes on it (each test runs on both stores)."""
    outboxes: List[Outbox] = []
    store: EventStore
    if request.param == "sqlite":
        sqlite = Storage(tmp_path / "events.db")
        store = sqlite

        def make() -> Outbox:
            outboxes.append(SQLiteOutbox(sqlite))
            return outboxes[-1]

    else:
        from tracklane.collector.outbox_pg import PostgresOutbox
        from tracklane.collector.storage_pg import PostgresStorage

        dsn = request.getfixturevalue("postgres").create_database("outbox")
        store = PostgresStorage(dsn)

        def make() -> Outbox:
            outboxes.append(PostgresOutbox(dsn, lease_seconds=60))
            return outboxes[-1]

    yield store, make
    for outbox in outboxes:
        outbox.close()
    store.close()


def _store(storage: Any, count: int, start: int = 0) -> None:
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


def _timed_row(i: int, body: str, original: Optional[str]) -> StoredMessage:
    """Event ``m-<i>`` received at 00:00:01, corrected to 00:00:00.500, with ``body``."""
    return StoredMessage(
        "key",
        f"m-{i}",
        "track",
        "u",
        None,
        "E",
        "2026-01-01T00:00:01.000Z",
        "2026-01-01T00:00:00.500Z",
        original,
        body,
    )


def test_claims_advance_lease_and_settle(opened: Opened) -> None:
    """Claims take new events in order, never twice while leased; settled rows are gone."""
    storage, make = opened
    _store(storage, 3)  # before the destination exists: not sent to it
    outbox = make()
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


def test_failures_come_back_when_due_and_dead_letters_replay(opened: Opened) -> None:
    """A retry is claimable only from its due time; a dead letter is listed and replayable."""
    storage, make = opened
    outbox = make()
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
    (status,) = outbox.status([("D", "webhook")])
    assert (status.failed, status.dead_lettered, status.last_error) == (1, 0, "HTTP 422: bad")


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


@contextlib.contextmanager
def two_pg_collectors(postgres: Any, name: str) -> Iterator[Tuple[Any, Any, Any]]:
    """A fresh PostgreSQL store and two collectors' outboxes on it (60 s leases), closed after."""
    from tracklane.collector.outbox_pg import PostgresOutbox
    from tracklane.collector.storage_pg import PostgresStorage

    dsn = postgres.create_database(name)
    storage = PostgresStorage(dsn)
    first = PostgresOutbox(dsn, lease_seconds=60)
    second = PostgresOutbox(dsn, lease_seconds=60)
    try:
        yield storage, first, second
    finally:
        first.close()
        second.close()
        storage.close()


def test_postgres_collectors_never_share_a_claim_and_take_over_expired_leases(
    postgres: Any,
) -> None:
    """Two collectors claim disjoint rows; a dead one's rows are claimed once its lease ends."""
    with two_pg_collectors(postgres, "takeover") as (storage, alive, dead):
        alive.register(["D"])
        _store(storage, 30)
        now = time.time()
        held = dead.claim("D", 20, now=now)
        mine = alive.claim("D", 20, now=now)
        assert held is not None
        assert mine is not None
        held_ids = {row.first for row in held.rows}
        assert (len(held_ids), len(mine.rows)) == (20, 10)
        assert held_ids.isdisjoint(row.first for row in mine.rows)
        alive.settle(mine, Settlement(delivered=10))
        assert alive.claim("D", 50, now=now + 30) is None  # leased by the other collector
        taken = alive.claim("D", 50, now=now + 61)  # its lease expired: taken over
        assert taken is not None
        assert {row.first for row in taken.rows} == held_ids
        dead.settle(held, Settlement(delivered=20))  # too late: the rows are not its own
        (status,) = alive.status([("D", "webhook")])
        assert status.pending == 20
        alive.settle(taken, Settlement(delivered=20))
        (status,) = alive.status([("D", "webhook")])
        assert status.pending == 0
        assert status.delivered == 30  # each row once, however many collectors held it


def test_a_due_retry_is_claimed_before_a_backlog_stored_after_it(opened: Opened) -> None:
    """Retries that fell due are not starved by new events arriving faster than delivery."""
    storage, make = opened
    outbox = make()
    outbox.register(["D"])
    _store(storage, 1)
    claim = outbox.claim("D", 10)
    assert claim is not None
    (event,) = outbox.events(claim)
    outbox.settle(claim, Settlement(retries=[Retry(event.id, 1, time.time(), "HTTP 503")]))
    _store(storage, 50, start=1)  # the backlog, stored after the retry fell due
    first = outbox.claim("D", 1, now=time.time() + 1)
    assert first is not None
    assert [e.message["messageId"] for e in outbox.events(first)] == ["m-0"]


def test_a_late_settlement_after_a_takeover_counts_nothing_twice(postgres: Any) -> None:
    """The collector that took rows over counts them; the late owner's settle adds nothing."""
    with two_pg_collectors(postgres, "late_settle") as (storage, first, second):
        first.register(["D"])
        _store(storage, 6)
        now = time.time()
        slow = first.claim("D", 10, now=now)
        assert slow is not None
        taken = second.claim("D", 10, now=now + 61)  # the first one's lease expired
        assert taken is not None
        ids = [row.first for row in taken.rows]
        second.settle(
            taken,
            Settlement(
                delivered=4, filtered=1, filtered_ids=ids[:1], skipped=1, skipped_ids=ids[1:2]
            ),
        )
        late_dead = [DeadLetter(event_id, 3, "HTTP 400") for event_id in ids[2:4]]
        first.settle(slow, Settlement(delivered=4, dead=late_dead))  # it woke up too late
        (status,) = second.status([("D", "webhook")])
        assert (status.delivered, status.filtered, status.skipped) == (4, 1, 1)
        assert (status.pending, status.dead_lettered, status.last_error) == (0, 0, None)


def test_traces_say_where_a_destination_added_later_starts(opened: Opened) -> None:
    """A destination registered after events were stored records that it starts after them."""
    store, make = opened
    outbox = make()
    outbox.register(["Early"])
    _store(store, 3)
    outbox.register(["Late"])
    _store(store, 2, start=3)
    traces = {t.destination: t for t in outbox.traces([1, 2, 3, 4, 5])}
    assert traces["Early"].start == 0
    assert traces["Late"].start == 3
    (status,) = outbox.status([("Late", "webhook")])
    assert (status.pending, status.delivered) == (2, 0)  # only what came after it


def test_wire_events_match_decoding_and_ingest_stays_fsynced(tmp_path: Path) -> None:
    """SQLite's JSON wire form equals the decoded one; outbox commits leave ingest on FULL."""
    import orjson

    storage = Storage(tmp_path / "events.db")
    outbox = SQLiteOutbox(storage)
    try:
        outbox.register(["D"])
        rows = [
            _timed_row(
                i,
                '{"type":"track","messageId":"m-' + str(i) + '","timestamp":"2025-12-31T23:59:59Z",'
                '"properties":{"n":123456789012345678901234567890,"s":"\\u00e9"},'
                '"integrations":{"All":false,"D":{"x":' + str(i) + "}}}",
                None if i else "2025-12-31T23:59:59Z",
            )
            for i in range(3)
        ]
        storage.insert(rows)
        claim = outbox.claim("D", 10)
        assert claim is not None
        built = outbox.wire_events(claim)
        outbox._sql_json = False  # as on a SQLite without the JSON functions
        encoded = outbox.wire_events(claim)
        assert [(e.id, e.message_id, e.integrations) for e in built] == [
            (e.id, e.message_id, e.integrations) for e in encoded
        ]
        for ours, theirs in zip(built, encoded):
            assert json.loads(ours.wire) == json.loads(theirs.wire)
        first = orjson.loads(built[0].wire)
        assert (first["timestamp"], first["originalTimestamp"]) == (
            "2026-01-01T00:00:00.500Z",
            "2025-12-31T23:59:59Z",
        )
        assert b"123456789012345678901234567890" in built[0].wire
        outbox.settle(claim, Settlement(delivered=3))
        with storage.write_transaction() as db:
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        outbox.close()
        storage.close()


def test_wire_events_are_the_decoded_events_encoded(opened: Opened) -> None:
    """Both outboxes send what decoding gives: same JSON, key order, integrations, ids."""
    storage, make = opened
    outbox = make()
    outbox.register(["D"])
    bodies = [
        ('{"type":"track","messageId":"m-0","timestamp":"2025-12-31T23:59:59Z"}', True),
        ('{"type":"track","messageId":"m-1","integrations":{"All":false,"D":{"x":1}}}', False),
        ('{"type":"track","messageId":"m-2","properties":{"timestamp":"t","n":1e3}}', False),
        ('{"type":"track","messageId":"m-3","integrations":true,"context":{"a":[1,{}]}}', False),
        (
            '{"type":"track","messageId":"m-4","integrations":{"D":{"n":123456789012345678901}}}',
            False,
        ),
    ]
    storage.insert(
        [
            _timed_row(i, body, "2025-12-31T23:59:59Z" if has_timestamp else None)
            for i, (body, has_timestamp) in enumerate(bodies)
        ]
    )
    claim = outbox.claim("D", 10)
    assert claim is not None
    wire = outbox.wire_events(claim)
    decoded = outbox.events(claim)
    assert [(w.id, w.message_id, w.write_key) for w in wire] == [
        (e.id, e.message["messageId"], e.write_key) for e in decoded
    ]
    for ours, event in zip(wire, decoded):
        pairs = json.loads(ours.wire, object_pairs_hook=list)
        assert pairs == json.loads(json.dumps(event.message), object_pairs_hook=list)
        integrations = event.message.get("integrations")
        assert ours.integrations == (integrations if isinstance(integrations, dict) else None)
    assert json.loads(wire[0].wire)["originalTimestamp"] == "2025-12-31T23:59:59Z"


def test_a_closed_postgres_collector_hands_its_claims_over_at_once(postgres: Any) -> None:
    """Closing releases the rows a collector still holds; another claims them before expiry."""
    with two_pg_collectors(postgres, "release") as (storage, leaving, staying):
        leaving.register(["D"])
        _store(storage, 5)
        now = time.time()
        held = leaving.claim("D", 10, now=now)
        assert held is not None
        assert staying.claim("D", 10, now=now) is None
        leaving.close()
        taken = staying.claim("D", 10, now=now)
        assert taken is not None
        assert [row.first for row in taken.rows] == [row.first for row in held.rows]


def test_a_range_read_in_one_row_equals_reading_it_row_by_row(tmp_path: Path) -> None:
    """The one-row read of a claim's range gives the same ids, keys, messageIds, wire bytes
    and integrations, in the same order, as reading it row by row, whatever the bodies hold."""
    import sqlite3

    from tracklane.collector.outbox import _WIRE_SELECT, _wire_rows

    storage = Storage(tmp_path / "events.db")
    bodies = [
        '{"type":"track","messageId":"a","properties":{"text":"line\\nbreak\\ttab \\"q\\""}}',
        '{"type":"track","messageId":"b","properties":{"s":"\\ud800 lone","z":"\\u0000"}}',
        '{"type":"track","messageId":"c","properties":{"e":"é ✓ 𝄞","n":123456789012345678901}}',
        '{"type":"track","messageId":"d","integrations":{"All":false,"D":{"x":1.5}}}',
        '{"type":"track","messageId":"e","integrations":"D"}',
        '{"type":"track","messageId":"f","integrations":null,"timestamp":"2025-12-31T23:59:59Z"}',
        '{"type":"track","messageId":"g","integrations":[1]}',
    ]
    keys = ["key", 'k"ey\\', "ключ", "key", "key", "key", "key"]
    storage.insert(
        [
            _timed_row(i, body, "2025-12-31T23:59:59Z" if '"timestamp"' in body else None)._replace(
                write_key=key, message_id=f'id {i} "quoted" \\ é'
            )
            for i, (key, body) in enumerate(zip(keys, bodies))
        ]
    )
    try:
        with contextlib.closing(sqlite3.connect(tmp_path / "events.db")) as db:
            for first, last in [(1, 7), (2, 5), (7, 7), (8, 20)]:
                expected = db.execute(_WIRE_SELECT, (first, last)).fetchall()
                assert _wire_rows(db, first, last) == expected
            assert _wire_rows(db, 8, 20) == []
            assert len(_wire_rows(db, 1, 7)) == 7
    finally:
        storage.close()
