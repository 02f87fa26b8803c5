"""The warehouse's COPY text and batch decoding: the fast paths give what the slow ones give."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List

import pytest

from tracklane._iso import parse_iso
from tracklane.collector._json import dumps, loads_stored_bytes
from tracklane.collector.destinations.warehouse_build import _decode
from tracklane.collector.destinations.warehouse_rows import (
    FIXED_COLUMNS,
    KIND_TYPES,
    _copy_rows_one_by_one,
    build_rows,
    copy_rows,
    timestamp_text,
)

from .test_warehouse import six_types, stored

LOADED_AT = datetime(2024, 5, 1, 10, 0, 1, tzinfo=timezone.utc)


def mixed_batch() -> List[Dict[str, Any]]:
    """Six types, nested context, late columns, type conflicts, values of every kind."""
    return [
        *six_types(),
        # Columns that appear only in later rows (NULL in the earlier ones) and a context
        # key missing from one row.
        stored("track", "t2", event="Order Completed", properties={"total": 3, "coupon": "X"}),
        stored("track", "t3", event="Order Completed", context={"ip": "10.0.0.2"}),
        # A column first seen as text, then given a number, a boolean and a date-time.
        stored("track", "t4", event="Mixed", properties={"v": "text", "at": "soon"}),
        stored("track", "t5", event="Mixed", properties={"v": 7, "at": "2024-05-01T08:00:00Z"}),
        stored("track", "t6", event="Mixed", properties={"v": True, "at": 1.5}),
        stored("identify", "i2", userId="u2", traits={"logins": 3, "score": 2.5}),
        stored("identify", "i3", userId="u2", traits={"logins": 4.5, "vip": False}),
    ]


def test_copy_text_equals_formatting_value_by_value() -> None:
    """Every table's COPY text, discards included, is what fitting value by value gives."""
    rows = build_rows(mixed_batch(), LOADED_AT)
    assert {"tracks", "order_completed", "mixed", "identifies", "users"} <= set(rows.tables)
    for name, table in rows.tables.items():
        fixed = FIXED_COLUMNS.get(name, FIXED_COLUMNS["tracks"])
        as_created = {c: fixed.get(c) or KIND_TYPES[k] for c, k in table.kinds.items()}
        all_text = dict.fromkeys(table.kinds, "text")  # every value as its text
        for columns in (as_created, all_text):
            names, data, discards = copy_rows(table, columns)
            types = [columns[column] for column in names]
            assert (names, data, discards) == _copy_rows_one_by_one(table, names, types), name
            assert data.count("\n") == len(table.rows)
    mixed = rows.tables["mixed"]
    names, data, discards = copy_rows(mixed, dict.fromkeys(mixed.kinds, "text"))
    assert "2024-05-01T08:00:00Z" in data  # a date-time in a text column: as sent
    assert "\tt\t" not in data
    assert "True" not in data
    assert "true" in data
    assert not discards


def test_a_value_that_does_not_fit_its_column_is_discarded_not_formatted() -> None:
    """A text value in a bigint column leaves the column NULL and goes to the discards."""
    rows = build_rows(mixed_batch(), LOADED_AT)
    mixed = rows.tables["mixed"]
    columns = {c: KIND_TYPES[k] for c, k in mixed.kinds.items()} | {"v": "bigint"}
    _names, data, discards = copy_rows(mixed, columns)
    assert [(d.row_id, d.column, d.value) for d in discards] == [
        ("t4", "v", "text"),
        ("t6", "v", "true"),
    ]
    assert data.count("\n") == 3


@pytest.mark.parametrize(
    "odd",
    [
        {"wide": 2**70, "digits": "1234567890123456789012"},
        {"surrogate": "\ud800 alone"},
    ],
    ids=["wide integer", "lone surrogate"],
)
def test_decoding_a_batch_gives_what_decoding_each_body_gives(odd: Dict[str, Any]) -> None:
    """Wide integers stay exact and lone surrogates are kept, wherever they are in a batch."""
    plain = [dumps(stored("track", f"m{i}", event="E", properties={"n": i})) for i in range(5)]
    odd_body = dumps(stored("track", "odd", event="E", properties=odd))
    for bodies in (plain, [*plain[:2], odd_body, *plain[2:]]):
        decoded = _decode(bodies)
        assert decoded == [loads_stored_bytes(body) for body in bodies]
    assert _decode([odd_body])[0]["properties"] == odd


@pytest.mark.parametrize(
    "at",
    [
        datetime(2024, 5, 1, 10, 0, 0, tzinfo=timezone.utc),
        datetime(2024, 5, 1, 10, 0, 20, 500000, tzinfo=timezone.utc),
        datetime(2024, 5, 1, 10, 0, 20, 10, tzinfo=timezone.utc),
        datetime(2024, 5, 1, 12, 0, 0, 120000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 5, 1, 12, 0, 10, tzinfo=timezone(timedelta(hours=-3))),
    ],
)
def test_timestamp_text_names_the_same_instant(at: datetime) -> None:
    """The COPY form of a time keeps every digit of it and its offset."""
    text = timestamp_text(at)
    assert "T" not in text
    parsed = parse_iso(text)
    assert parsed == at
    assert parsed.utcoffset() == at.utcoffset()


def test_a_nested_key_with_no_usable_name_is_discarded_under_its_full_path() -> None:
    """The discard names where the value was: ``properties.shipping.!!!``, ``context.app.***``."""
    message = stored(
        "track",
        "t1",
        event="E",
        properties={"shipping": {"!!!": "x", "city": "Oslo"}},
        context={"app": {"***": 1, "version": "1"}},
    )
    rows = build_rows([message], LOADED_AT)
    assert sorted((d.column, d.value, d.reason) for d in rows.discards) == [
        ("context.app.***", "1", "no usable column name"),
        ("properties.shipping.!!!", "x", "no usable column name"),
    ]
    assert rows.tables["e"].rows[0]["shipping_city"] == "Oslo"


@pytest.mark.parametrize(("builders", "depth"), [(0, 2), (1, 2), (2, 3), (4, 5)])
def test_the_destination_loads_a_claim_more_than_it_has_row_builders(
    builders: int, depth: int
) -> None:
    """Every builder can build a claim while another claim is loaded (two at least)."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    from tracklane.collector.destinations.base import check_settings
    from tracklane.collector.destinations.postgres import WarehouseDestination

    table = {"dsn": "postgresql://postgres@127.0.0.1:1/none", "row_builders": builders}
    config = check_settings(WarehouseDestination.settings, table, "destinations.w")
    destination = WarehouseDestination("w", config)  # connects on its first batch only
    try:
        assert destination.claims_in_flight == depth
    finally:
        destination.close()
