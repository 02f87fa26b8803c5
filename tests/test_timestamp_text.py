"""ISO-8601 text already in wire form takes a shortcut; it must give what the full path gives."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracklane import ValidationError
from tracklane.messages import format_timestamp

offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
moments = st.builds(
    lambda naive, zone: naive.replace(tzinfo=zone, microsecond=naive.microsecond // 1000 * 1000),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    offsets,
)


@given(moments)
def test_wire_text_is_kept_as_the_datetime_path_formats_it(moment: dt.datetime) -> None:
    """Text in wire form gives exactly what the same moment as a datetime gives."""
    text = moment.isoformat(timespec="milliseconds")
    assert format_timestamp(text) == format_timestamp(moment) == text
    if moment.utcoffset() == dt.timedelta(0):
        assert format_timestamp(text[:-6] + "Z") == text


@pytest.mark.parametrize(
    "text",
    ["2024-02-30T10:00:00.000Z", "2024-13-01T00:00:00.000+00:00", "2024-01-01T24:00:00.000Z"],
)
def test_impossible_wire_text_is_refused(text: str) -> None:
    """Text shaped like the wire form but not a real time is still a ValidationError."""
    with pytest.raises(ValidationError, match="timestamp: not an ISO-8601 time"):
        format_timestamp(text)


def test_minus_zero_offset_becomes_plus_zero() -> None:
    """``-00:00`` is written ``+00:00``, as the full path writes it."""
    assert format_timestamp("2024-01-01T00:00:00.000-00:00") == "2024-01-01T00:00:00.000+00:00"
