"""The postgres destination against Debian's PostgreSQL: Segment's warehouse schema."""

from __future__ import annotations

import threading
from datetime import timezone
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from helpers import wait_until
from pg import PostgresServer, sessions_waiting_on_locks
from tracklane.collector.destinations.warehouse import PostgresWarehouse, WarehouseError
from tracklane.collector.destinations.warehouse_rows import FIXED_COLUMNS, snake_case

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")

SCHEMA = "backend"
COMMON = {
    "id",
    "anonymous_id",
    "user_id",
    "received_at",
    "sent_at",
    "timestamp",
    "original_timestamp",
    "uuid_ts",
}
CONTEXT = {"context_app_version", "context_library_name", "context_traits_email", "context_ip"}


def stored(kind: str, message_id: str, **fields: Any) -> Dict[str, Any]:
    """A message as the collector stores and serves it (wire form plus server times)."""
    message: Dict[str, Any] = {
        "type": kind,
        "messageId": message_id,
        "userId": "u1",
        "receivedAt": "2024-05-01T10:00:00.000Z",
        "timestamp": "2024-05-01T09:59:59.000Z",
        "originalTimestamp": "2024-05-01T09:59:58.500Z",
        "sentAt": "2024-05-01T09:59:59.500Z",
        "context": {
            "app": {"version": "1.2.3"},
            "library": {"name": "tracklane"},
            "traits": {"email": "ann@example.com"},
            "ip": "10.0.0.1",
        },
    }
    message.update(fields)
    return {key: value for key, value in message.items() if value is not ...}


def six_types() -> List[Dict[str, Any]]:
    """One message of each type, with nested context, traits and properties."""
    return [
        stored(
            "track",
            "t1",
            event="Order Completed",
            properties={
                "total": 12.5,
                "itemCount": 3,
                "paid": True,
                "paidAt": "2024-05-01T09:59:00Z",
                "products": [{"sku": "a"}],
                "shipping": {"city": "Oslo", "zipCode": "0150"},
            },
        ),
        stored(
            "identify",
            "i1",
            traits={"email": "ann@example.com", "plan": "pro", "address": {"street": "6th"}},
        ),
        stored("page", "p1", userId=..., anonymousId="a1", name="Home", properties={"path": "/"}),
        stored("screen", "s1", name="Settings", properties={"darkMode": False}),
        stored("group", "g1", groupId="acme", traits={"employeeCount": 30}),
        stored("alias", "al1", previousId="a1"),
    ]


@pytest.fixture
def warehouse(postgres: PostgresServer) -> Iterator[PostgresWarehouse]:
    """A warehouse on a fresh database."""
    loader = PostgresWarehouse(postgres.create_database("wh"))
    yield loader
    loader.close()


def columns(dsn: str, schema: str = SCHEMA) -> Dict[str, Dict[str, str]]:
    """Every table of ``schema`` with its columns and their types."""
    found: Dict[str, Dict[str, str]] = {}
    with psycopg.connect(dsn) as conn:
        for table, column, data_type in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s",
            [schema],
        ):
            found.setdefault(table, {})[column] = data_type
    return found


def rows(dsn: str, sql: str) -> List[Tuple[Any, ...]]:
    """The result of one query."""
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(sql))


def test_tables_and_columns_follow_segments_schema(warehouse: PostgresWarehouse) -> None:
    """Six types give Segment's tables, with flattened context, traits and properties."""
    result = warehouse.load("Backend", six_types())
    assert (result.messages, result.new, result.discarded_values) == (6, 6, 0)
    found = columns(warehouse.dsn)
    assert set(found) == {
        "tracks",
        "order_completed",
        "identifies",
        "users",
        "pages",
        "screens",
        "groups",
        "aliases",
        "tracklane_discards",
    }
    track = COMMON | CONTEXT | {"event", "event_text"}
    assert set(found["tracks"]) == track
    assert set(found["order_completed"]) == track | {
        "total",
        "item_count",
        "paid",
        "paid_at",
        "products",
        "shipping_city",
        "shipping_zip_code",
    }
    assert set(found["identifies"]) == COMMON | CONTEXT | {"email", "plan", "address_street"}
    assert set(found["users"]) == {
        "id",
        "received_at",
        "uuid_ts",
        "email",
        "plan",
        "address_street",
    }
    assert set(found["pages"]) == COMMON | CONTEXT | {"name", "path"}
    assert set(found["screens"]) == COMMON | CONTEXT | {"name", "dark_mode"}
    assert set(found["groups"]) == COMMON | CONTEXT | {"group_id", "employee_count"}
    assert set(found["aliases"]) == COMMON | CONTEXT | {"previous_id"}
    detail = found["order_completed"]
    assert detail["total"] == "double precision"
    assert detail["item_count"] == "bigint"
    assert detail["paid"] == "boolean"
    assert detail["paid_at"] == "timestamp with time zone"
    assert detail["products"] == "text"
    assert detail["shipping_zip_code"] == "text"
    assert detail["received_at"] == "timestamp with time zone"
    assert found["screens"]["dark_mode"] == "boolean"


def test_values_land_in_their_columns(warehouse: PostgresWarehouse) -> None:
    """Ids, times, the event slug and flattened values are stored as Segment stores them."""
    warehouse.load("Backend", six_types())
    (row,) = rows(
        warehouse.dsn,
        "SELECT id, user_id, event, event_text, context_app_version, total, item_count, paid,"
        " products, shipping_city, received_at, sent_at, timestamp, original_timestamp,"
        " uuid_ts IS NOT NULL FROM backend.order_completed",
    )
    assert row[:10] == (
        "t1",
        "u1",
        "order_completed",
        "Order Completed",
        "1.2.3",
        12.5,
        3,
        True,
        '[{"sku":"a"}]',
        "Oslo",
    )
    received, sent, timestamp, original, has_uuid_ts = row[10:]
    assert received.isoformat() == "2024-05-01T10:00:00+00:00"
    assert sent.isoformat() == "2024-05-01T09:59:59.500000+00:00"
    assert timestamp.isoformat() == "2024-05-01T09:59:59+00:00"
    assert original.isoformat() == "2024-05-01T09:59:58.500000+00:00"
    assert has_uuid_ts
    assert rows(warehouse.dsn, "SELECT id, event FROM backend.tracks") == [
        ("t1", "order_completed")
    ]
    assert rows(warehouse.dsn, "SELECT anonymous_id, user_id, name, path FROM backend.pages") == [
        ("a1", None, "Home", "/")
    ]
    assert rows(warehouse.dsn, "SELECT group_id, employee_count FROM backend.groups") == [
        ("acme", 30)
    ]
    assert rows(warehouse.dsn, "SELECT previous_id, user_id FROM backend.aliases") == [("a1", "u1")]


def test_times_keep_every_digit_and_their_offset(warehouse: PostgresWarehouse) -> None:
    """Sub-second digits (trailing zeros, a single microsecond) and offsets load exactly."""
    warehouse.load(
        "Backend",
        [
            stored("track", "a", event="E", timestamp="2024-05-01T10:00:20.000010Z"),
            stored("track", "b", event="E", timestamp="2024-05-01T10:00:20.120+05:30"),
            stored("track", "c", event="E", timestamp="2024-05-01T10:00:20-03:00"),
        ],
    )
    found = rows(warehouse.dsn, "SELECT id, timestamp FROM backend.e ORDER BY id")
    assert [(i, t.astimezone(timezone.utc).isoformat()) for i, t in found] == [
        ("a", "2024-05-01T10:00:20.000010+00:00"),
        ("b", "2024-05-01T04:30:20.120000+00:00"),
        ("c", "2024-05-01T13:00:20+00:00"),
    ]


def test_text_with_nul_characters_loads_without_them(warehouse: PostgresWarehouse) -> None:
    """PostgreSQL text cannot hold U+0000, which JSON allows: such a batch still loads, with
    those characters left out, instead of failing (and being dead-lettered) whole."""
    batch = [
        stored("track", "n1", event="Clicked", properties={"note": "a\x00b", "tags": ["x\x00"]}),
        stored("track", "n2", event="Clicked", properties={"note": "fine"}),
        stored("identify", "n3", traits={"name": "Ann\x00"}),
    ]
    result = warehouse.load("Backend", batch)
    assert (result.messages, result.new) == (3, 3)
    got = rows(warehouse.dsn, "SELECT id, note, tags FROM backend.clicked ORDER BY id")
    assert got == [("n1", "ab", '["x"]'), ("n2", "fine", None)]
    assert rows(warehouse.dsn, "SELECT name FROM backend.identifies") == [("Ann",)]


def test_a_property_that_appears_later_adds_a_column(warehouse: PostgresWarehouse) -> None:
    """A new key adds a column; rows loaded before have NULL there."""
    warehouse.load("Backend", [stored("track", "t1", event="Clicked", properties={"a": 1})])
    warehouse.load(
        "Backend", [stored("track", "t2", event="Clicked", properties={"couponCode": "X"})]
    )
    assert columns(warehouse.dsn)["clicked"]["coupon_code"] == "text"
    assert rows(warehouse.dsn, "SELECT id, a, coupon_code FROM backend.clicked ORDER BY id") == [
        ("t1", 1, None),
        ("t2", None, "X"),
    ]


def test_keys_appearing_together_add_their_columns_in_the_order_met(
    warehouse: PostgresWarehouse,
) -> None:
    """A new table gets the fixed columns, then the batch's in the order first met; several
    new keys in a later batch are added together, each with its own type, after those."""
    first = {"plan": "pro", "seats": 3}
    warehouse.load("Backend", [stored("track", "t1", event="Upgraded", properties=first)])
    later = {"plan": "team", "trial": True, "price": 9.5, "renewsAt": "2024-06-01T00:00:00Z"}
    later["seats"] = 4
    later["address"] = {"city": "Lyon"}
    warehouse.load("Backend", [stored("track", "t2", event="Upgraded", properties=later)])
    with psycopg.connect(warehouse.dsn) as conn:
        ordered = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'backend' AND table_name = 'upgraded' ORDER BY ordinal_position"
        ).fetchall()
    names = [name for name, _ in ordered]
    assert names[: len(FIXED_COLUMNS["tracks"])] == list(FIXED_COLUMNS["tracks"])
    assert names.index("context_ip") < names.index("plan") < names.index("seats")
    assert names[-4:] == ["trial", "price", "renews_at", "address_city"]
    assert dict(ordered[-4:]) == {
        "trial": "boolean",
        "price": "double precision",
        "renews_at": "timestamp with time zone",
        "address_city": "text",
    }
    assert rows(
        warehouse.dsn,
        "SELECT id, plan, seats, trial, price, address_city FROM backend.upgraded ORDER BY id",
    ) == [("t1", "pro", 3, None, None, None), ("t2", "team", 4, True, 9.5, "Lyon")]


def test_type_conflicts_keep_the_column_type_and_the_value_as_text(
    warehouse: PostgresWarehouse,
) -> None:
    """The first type wins; text takes anything, float takes ints; misfits go to the discards."""
    first = {"amount": 5, "label": "five", "flag": True, "ratio": 1.5}
    warehouse.load("Backend", [stored("track", "t1", event="Paid", properties=first)])
    later = {"amount": "lots", "label": 7, "flag": 1, "ratio": 2}
    result = warehouse.load("Backend", [stored("track", "t2", event="Paid", properties=later)])
    assert result.discarded_values == 2
    types = columns(warehouse.dsn)["paid"]
    assert (types["amount"], types["label"], types["flag"], types["ratio"]) == (
        "bigint",
        "text",
        "boolean",
        "double precision",
    )
    assert rows(
        warehouse.dsn, "SELECT amount, label, flag, ratio FROM backend.paid WHERE id = 't2'"
    ) == [(None, "7", None, 2.0)]
    assert sorted(
        rows(
            warehouse.dsn,
            "SELECT table_name, row_id, column_name, column_value, reason"
            " FROM backend.tracklane_discards",
        )
    ) == [
        ("paid", "t2", "amount", "lots", "a string value in a bigint column"),
        ("paid", "t2", "flag", "1", "a int value in a boolean column"),
    ]


def test_ints_and_floats_in_one_batch_make_a_float_column(warehouse: PostgresWarehouse) -> None:
    """A new column seeing both ints and floats is double precision, nothing discarded."""
    batch = [
        stored("track", "t1", event="Rated", properties={"score": 4}),
        stored("track", "t2", event="Rated", properties={"score": 4.5}),
    ]
    assert warehouse.load("Backend", batch).discarded_values == 0
    assert columns(warehouse.dsn)["rated"]["score"] == "double precision"


def test_reserved_and_unusable_names_are_kept_as_discards(warehouse: PostgresWarehouse) -> None:
    """A property named like a standard column, or with no usable name, is not lost."""
    properties = {"user_id": "spoof", "!!!": "bang", "ok": 1}
    result = warehouse.load("Backend", [stored("track", "t1", event="Odd", properties=properties)])
    assert result.discarded_values == 2
    assert rows(warehouse.dsn, "SELECT user_id, ok FROM backend.odd") == [("u1", 1)]
    assert sorted(
        rows(
            warehouse.dsn,
            "SELECT column_name, column_value, reason FROM backend.tracklane_discards",
        )
    ) == [
        ("properties.!!!", "bang", "no usable column name"),
        ("user_id", "spoof", "reserved column name"),
    ]


def test_redelivery_never_duplicates_a_row(warehouse: PostgresWarehouse) -> None:
    """Loading the same batch again (or overlapping) leaves one row per messageId."""
    batch = six_types()
    conflict = stored("track", "t9", event="Order Completed", properties={"total": "n/a"})
    assert warehouse.load("Backend", [*batch, conflict]).new == 7
    again = warehouse.load("Backend", [*batch, conflict, batch[0]])
    assert (again.new, again.discarded_values) == (0, 0)
    for table, expected in [
        ("tracks", 2),
        ("order_completed", 2),
        ("identifies", 1),
        ("users", 1),
        ("pages", 1),
        ("screens", 1),
        ("groups", 1),
        ("aliases", 1),
        ("tracklane_discards", 1),
    ]:
        assert rows(warehouse.dsn, f"SELECT count(*) FROM backend.{table}") == [(expected,)], table


def test_users_hold_the_latest_traits(warehouse: PostgresWarehouse) -> None:
    """users has one row per userId; each trait keeps its latest value, whatever the order."""
    early = stored(
        "identify", "i1", receivedAt="2024-05-01T10:00:00.000Z", traits={"plan": "free", "seats": 1}
    )
    late = stored("identify", "i2", receivedAt="2024-05-02T10:00:00.000Z", traits={"plan": "pro"})
    later = stored("identify", "i3", receivedAt="2024-05-03T10:00:00.000Z", traits={"name": "Ann"})
    warehouse.load("Backend", [late, early])  # one batch, out of order
    warehouse.load("Backend", [early])  # an old identify redelivered after the newer one
    warehouse.load("Backend", [later])
    assert rows(
        warehouse.dsn, "SELECT id, plan, seats, name, received_at::text FROM backend.users"
    ) == [("u1", "pro", 1, "Ann", "2024-05-03 10:00:00+00")]
    assert rows(warehouse.dsn, "SELECT count(*) FROM backend.identifies") == [(3,)]


def test_a_schema_per_source_and_a_configured_schema(postgres: PostgresServer) -> None:
    """Each source gets its own snake_cased schema; ``schema`` can name it instead."""
    dsn = postgres.create_database("wh")
    by_source = PostgresWarehouse.from_config({"dsn": dsn})
    named = PostgresWarehouse.from_config({"dsn": dsn, "schema": "seg_{source}"})
    try:
        by_source.load("Mobile App", [stored("track", "a", event="Opened")])
        by_source.load("web", [stored("track", "b", event="Opened")])
        named.load("web", [stored("track", "c", event="Opened")])
    finally:
        by_source.close()
        named.close()
    assert rows(dsn, "SELECT id FROM mobile_app.tracks") == [("a",)]
    assert rows(dsn, "SELECT id FROM web.tracks") == [("b",)]
    assert rows(dsn, "SELECT id FROM seg_web.tracks") == [("c",)]


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({}, "missing 'dsn'"),
        ({"dsn": ""}, "'dsn' must be a non-empty string"),
        ({"dsn": "postgresql://x/y", "shema": "a"}, "unknown key 'shema'"),
        ({"dsn": "postgresql://x/y", "connect_timeout": 0}, "'connect_timeout' must be a positive"),
    ],
)
def test_bad_config_names_the_key(config: Dict[str, Any], error: str) -> None:
    """A bad destination config raises ValueError naming the key."""
    with pytest.raises(ValueError, match=error):
        PostgresWarehouse.from_config(config)


def test_unreachable_database_raises_warehouse_error() -> None:
    """A warehouse that cannot be reached raises WarehouseError (the router retries)."""
    with socket_port() as port:
        loader = PostgresWarehouse(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout=2)
        with pytest.raises(WarehouseError, match="cannot connect"):
            loader.load("Backend", six_types())
        loader.close()


def test_a_failed_batch_commits_nothing_and_loads_once_fixed(warehouse: PostgresWarehouse) -> None:
    """A batch failing half-way is rolled back whole; loading it again afterwards works."""
    warehouse.load("Backend", [stored("track", "t1", event="Tagged", properties={"tag": "a"})])
    with psycopg.connect(warehouse.dsn, autocommit=True) as conn:  # a column changed by hand
        conn.execute("ALTER TABLE backend.tagged ALTER COLUMN tag TYPE uuid USING NULL")
    batch = [
        stored("track", "t2", event="Tagged", properties={"tag": "not a uuid"}),
        six_types()[1],
    ]
    with pytest.raises(WarehouseError, match="uuid"):
        warehouse.load("Backend", batch)
    assert rows(warehouse.dsn, "SELECT to_regclass('backend.identifies')") == [(None,)]
    assert rows(warehouse.dsn, "SELECT count(*) FROM backend.tracks") == [(1,)]
    with psycopg.connect(warehouse.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE backend.tagged ALTER COLUMN tag TYPE text")
    assert warehouse.load("Backend", batch).new == 2


def load_in_two_loaders_at_once(
    dsn: str, batches_of: Callable[[int], List[List[Dict[str, Any]]]]
) -> None:
    """Two loaders (two collectors) load ``batches_of(0)`` and ``batches_of(1)`` at once;
    neither may fail."""
    loaders = [PostgresWarehouse(dsn) for _ in range(2)]
    errors: List[BaseException] = []
    start = threading.Barrier(2)

    def load(index: int) -> None:
        try:
            start.wait(10)
            for batch in batches_of(index):
                loaders[index].load("Backend", batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for loader in loaders:
        loader.close()
    assert errors == []


def test_concurrent_loaders_agree_on_new_columns(postgres: PostgresServer) -> None:
    """Two loaders (two collectors) adding the same new columns at once both succeed."""
    dsn = postgres.create_database("wh")

    def batches_of(index: int) -> List[List[Dict[str, Any]]]:
        return [
            [stored("track", f"{index}-{n}", event="Raced", properties={f"p{n}": n, "shared": n})]
            for n in range(10)
        ]

    load_in_two_loaders_at_once(dsn, batches_of)
    assert rows(dsn, "SELECT count(*) FROM backend.raced") == [(20,)]
    assert {f"p{n}" for n in range(10)} <= set(columns(dsn)["raced"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Order Completed", "order_completed"),
        ("accountType", "account_type"),
        ("HTTPServer", "http_server"),
        ("product_id", "product_id"),
        ("v2Name", "v2_name"),
        ("  spaced -- out  ", "spaced_out"),
        ("3rd party", "_3rd_party"),
        ("!!!", ""),
        ("x" * 80, "x" * 63),
    ],
)
def test_snake_case_names(name: str, expected: str) -> None:
    """Names are snake_cased as Segment does, cut to PostgreSQL's 63 bytes."""
    assert snake_case(name) == expected


class socket_port:
    """A loopback port with nothing listening (held bound, not listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *_exc: object) -> None:
        self._sock.close()


def test_a_copied_batch_mixing_new_columns_and_conflicts_loads_once(
    warehouse: PostgresWarehouse,
) -> None:
    """COPY keeps awkward text intact, adds columns met mid-batch, and redelivery adds nothing."""
    awkward = 'tab\there\nnew line \\N back\\slash, "quoted" ünïcode 😀'
    warehouse.load("Backend", [stored("track", "t0", event="Mixed", properties={"n": 1})])
    batch = [
        stored("track", f"t{i}", event="Mixed", properties={"n": i, "note": f"{awkward} {i}"})
        for i in range(1, 200)
    ]
    batch[119]["properties"]["late"] = True  # t120: a new column, met half-way through
    batch[149]["properties"]["n"] = "many"  # t150: a conflict with the bigint column
    batch.append(stored("identify", "i1", traits={"bio": awkward, "seats": 3}))
    first = warehouse.load("Backend", batch)
    assert (first.new, first.discarded_values) == (200, 1)
    again = warehouse.load("Backend", batch)
    assert (again.new, again.discarded_values) == (0, 0)
    assert rows(warehouse.dsn, "SELECT count(*), count(DISTINCT id) FROM backend.mixed") == [
        (200, 200)
    ]
    assert rows(warehouse.dsn, "SELECT count(*) FROM backend.tracks") == [(200,)]
    assert rows(warehouse.dsn, "SELECT n, note, late FROM backend.mixed WHERE id = 't120'") == [
        (120, f"{awkward} 120", True)
    ]
    assert rows(warehouse.dsn, "SELECT n, late FROM backend.mixed WHERE id = 't150'") == [
        (None, None)
    ]
    assert rows(warehouse.dsn, "SELECT bio, seats FROM backend.users") == [(awkward, 3)]
    assert rows(
        warehouse.dsn, "SELECT row_id, column_name, column_value FROM backend.tracklane_discards"
    ) == [("t150", "n", "many")]


def test_rows_left_in_one_table_do_not_stop_a_redelivery(warehouse: PostgresWarehouse) -> None:
    """A tracks row deleted by hand is loaded again; its event table keeps one row."""
    batch = six_types()
    warehouse.load("Backend", batch)
    with psycopg.connect(warehouse.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM backend.tracks")
    result = warehouse.load("Backend", batch)
    assert result.new == 1
    assert rows(warehouse.dsn, "SELECT id FROM backend.tracks") == [("t1",)]
    assert rows(warehouse.dsn, "SELECT id FROM backend.order_completed") == [("t1",)]


def test_loaders_racing_on_the_same_batches_load_each_event_once(
    postgres: PostgresServer,
) -> None:
    """Two loaders (collectors redelivering after a lost lease) leave one row per event."""
    dsn = postgres.create_database("wh")
    batches = [
        [
            stored("track", f"e{n}-{i}", event="Raced", properties={"i": i}),
            stored("identify", f"i{n}-{i}", userId=f"u{i}", traits={"n": n}),
        ]
        for n in range(15)
        for i in range(4)
    ]
    load_in_two_loaders_at_once(dsn, lambda index: batches)
    for table, expected in [("tracks", 60), ("raced", 60), ("identifies", 60), ("users", 4)]:
        assert rows(dsn, f"SELECT count(*), count(DISTINCT id) FROM backend.{table}") == [
            (expected, expected)
        ], table
    assert rows(dsn, "SELECT DISTINCT n FROM backend.users") == [(14,)]


def test_a_lost_connection_is_replaced_with_its_staging_tables(
    warehouse: PostgresWarehouse,
) -> None:
    """After the server ends the loader's session, the next loads reconnect and upsert users."""
    warehouse.load("Backend", [stored("identify", "i1", traits={"plan": "free"})])
    with psycopg.connect(warehouse.dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    later = [
        stored("identify", "i2", receivedAt="2024-05-02T10:00:00.000Z", traits={"plan": "pro"})
    ]
    try:
        warehouse.load("Backend", later)
    except WarehouseError:
        warehouse.load("Backend", later)  # the first use of a dead connection may fail
    assert rows(warehouse.dsn, "SELECT id, plan FROM backend.users") == [("u1", "pro")]


def test_long_nested_keys_are_cut_to_63_bytes_of_the_whole_name() -> None:
    """A nested column name longer than PostgreSQL's limit keeps its first 63 bytes."""
    from datetime import datetime, timezone

    from tracklane.collector.destinations.warehouse_rows import build_rows

    message = stored("track", "t1", event="Long", properties={"a" * 40: {"b" * 40: 1}})
    table = build_rows([message], datetime.now(timezone.utc)).tables["long"]
    assert ("a" * 40 + "_" + "b" * 22) in table.kinds


def test_a_load_held_up_in_the_database_does_not_hold_up_another_thread(
    warehouse: PostgresWarehouse,
) -> None:
    """Two threads load at once on their own connections: while one waits for a row lock,
    the other's batch (with a new column) is committed; then the first completes."""
    warehouse.load("Backend", [stored("identify", "i0", userId="held", traits={"plan": "free"})])
    blocker = psycopg.connect(warehouse.dsn)  # holds the users row the first load upserts
    errors: List[BaseException] = []

    def load(batch: List[Dict[str, Any]]) -> None:
        try:
            warehouse.load("Backend", batch)
        except BaseException as exc:
            errors.append(exc)

    held = [
        stored(
            "identify",
            "i1",
            userId="held",
            receivedAt="2024-05-02T10:00:00.000Z",
            traits={"plan": "pro"},
        )
    ]
    free = [
        stored("track", f"t{n}", event="Ran", properties={"n": n, "late": True}) for n in range(50)
    ]
    slow = threading.Thread(target=load, args=(held,))
    try:
        blocker.execute("SELECT * FROM backend.users WHERE id = 'held' FOR UPDATE")
        slow.start()
        wait_until(
            lambda: sessions_waiting_on_locks(warehouse.dsn) >= 1, 15.0, "the first load waits"
        )
        fast = threading.Thread(target=load, args=(free,))  # another session's load
        fast.start()
        fast.join(30)
        assert not fast.is_alive(), "the second load waited for the first"
        assert errors == []
        assert rows(warehouse.dsn, "SELECT count(*), count(late) FROM backend.ran") == [(50, 50)]
        assert slow.is_alive()
    finally:
        blocker.rollback()
        blocker.close()
        slow.join(30)
    assert errors == []
    assert rows(warehouse.dsn, "SELECT id, plan FROM backend.users") == [("held", "pro")]
    assert rows(warehouse.dsn, "SELECT count(*) FROM backend.identifies") == [(2,)]


def test_threads_upserting_the_same_users_in_opposite_orders_do_not_deadlock(
    warehouse: PostgresWarehouse,
) -> None:
    """Batches naming the same users in opposite orders, loaded by two threads at once,
    all commit (users are upserted in id order) and the latest traits win."""
    users = [f"u{n}" for n in range(20)]

    def batches_of(index: int) -> List[List[Dict[str, Any]]]:
        order = users if index == 0 else users[::-1]
        return [
            [
                stored(
                    "identify",
                    f"{index}-{rnd}-{user}",
                    userId=user,
                    receivedAt=f"2024-05-01T10:00:{rnd:02d}.{index}00Z",
                    traits={"round": rnd, "by": index},
                )
                for user in order
            ]
            for rnd in range(8)
        ]

    errors: List[BaseException] = []
    start = threading.Barrier(2)

    def load(index: int) -> None:
        try:
            start.wait(10)
            for batch in batches_of(index):
                warehouse.load("Backend", batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert rows(warehouse.dsn, "SELECT count(*) FROM backend.identifies") == [(320,)]
    assert rows(warehouse.dsn, "SELECT DISTINCT round, by FROM backend.users") == [(7, 1)]


def test_each_table_has_a_brin_index_on_received_at(warehouse: PostgresWarehouse) -> None:
    """received_at, Segment's sort key, gets a BRIN index (min/max per page range) per table."""
    warehouse.load("Backend", six_types())
    found = rows(
        warehouse.dsn,
        "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'backend'"
        " AND indexdef LIKE '%(received_at)%' ORDER BY tablename",
    )
    tables = {"tracks", "order_completed", "identifies", "pages", "screens", "groups", "aliases"}
    assert {table for table, _ in found} == tables | {"users"}
    assert all("USING brin" in definition for _, definition in found)
