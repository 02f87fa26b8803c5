"""Pure helpers of the collector: ISO times, JSON, gzip inflation, Basic auth, queries."""

from __future__ import annotations

import base64
import gzip
import zlib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracklane._iso import format_iso, parse_iso
from tracklane.collector._auth import basic_user
from tracklane.collector._body import GzipInflater
from tracklane.collector._ingest import RequestError, parse_body
from tracklane.collector._json import dumps, loads, loads_stored

# Any UTC time that stays in range in every offset, and offsets up to ±23 hours.
UTC_MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc)
)
OFFSET_MINUTES = st.integers(min_value=-23 * 60, max_value=23 * 60)


class TestTimes:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-02-29T23:59:59.999Z", "2024-02-29T23:59:59.999Z"),
            ("2024-02-29T23:59:59.9999999Z", "2024-02-29T23:59:59.999Z"),
            ("2024-03-01T01:00:00+01:00", "2024-03-01T00:00:00.000Z"),
            ("2024-03-01T01:00:00+0100", "2024-03-01T00:00:00.000Z"),
            ("2024-03-01T01:00:00+01", "2024-03-01T00:00:00.000Z"),
            ("2024-02-29T23:00:00-01:30", "2024-03-01T00:30:00.000Z"),
            ("2024-03-01 00:00:00,5", "2024-03-01T00:00:00.500Z"),
            ("2024-03-01T00:00", "2024-03-01T00:00:00.000Z"),
            ("2024-03-01", "2024-03-01T00:00:00.000Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ],
    )
    def test_parse_and_format(self, text: str, expected: str) -> None:
        """ISO-8601 variants parse (no offset means UTC) and format as UTC ``.mmmZ``."""
        assert format_iso(parse_iso(text)) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "yesterday",
            "2024-13-01",
            "2024-02-30",
            "2024-03-01T25:00:00Z",
            "2024-03-01T00:00+24:00",
        ],
    )
    def test_invalid_times_raise(self, text: str) -> None:
        """Non-ISO or impossible times raise ValueError."""
        with pytest.raises(ValueError, match="not an ISO-8601 time"):
            parse_iso(text)

    @given(UTC_MOMENTS, OFFSET_MINUTES)
    def test_format_parse_round_trip(self, moment: datetime, offset_minutes: int) -> None:
        """Formatting then parsing gives back the time truncated to milliseconds."""
        local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
        truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        assert parse_iso(format_iso(local)) == truncated

    @given(UTC_MOMENTS, OFFSET_MINUTES)
    def test_format_is_utc_with_milliseconds_and_z(
        self, moment: datetime, offset_minutes: int
    ) -> None:
        """Any aware time formats as its UTC time, zero-padded, milliseconds truncated, Z."""
        local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
        expected = (
            f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
        )
        assert format_iso(local) == expected


class TestJSON:
    def test_wide_integers_round_trip_exactly(self) -> None:
        """Integers beyond 64 bits keep every digit through loads and dumps."""
        value = {"n": 3**70, "m": -(2**70 + 1), "s": "Zoë"}
        raw = dumps(value)
        for parsed in (loads(raw), loads_stored(raw.decode())):
            assert parsed == value
            assert all(type(parsed[key]) is type(value[key]) for key in value)

    @pytest.mark.parametrize(
        "raw", [b"NaN", b"[Infinity]", b"[1e400, 12345678901234567890]", b"[-Infinity, 1]"]
    )
    def test_non_json_numbers_are_refused(self, raw: bytes) -> None:
        """NaN, Infinity and out-of-range numbers are not JSON."""
        with pytest.raises(RequestError, match="invalid JSON"):
            parse_body(raw)

    def test_lone_surrogates_are_kept_escaped(self) -> None:
        """A lone surrogate (parsed by the exact path) is stored as a valid escape."""
        value = loads(b'["\\ud800", 12345678901234567890123]')
        assert loads_stored(dumps(value).decode()) == value


class TestGzipInflater:
    def test_bomb_stops_at_the_limit(self) -> None:
        """Inflation stops as soon as the output passes the limit, not at the end."""
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        bomb = compressor.compress(bytes(20_000_000)) + compressor.flush()
        inflater = GzipInflater(limit=1000)
        with pytest.raises(RequestError, match="over the 1000-byte limit"):
            inflater.feed(bomb)
        assert inflater.produced == 1001

    def test_inflates_in_pieces_and_across_members(self) -> None:
        """Bytes fed one at a time, over two gzip members, inflate to the whole text."""
        data = gzip.compress(b"hello, ") + gzip.compress(b"world")
        inflater = GzipInflater(limit=100)
        for index in range(len(data)):
            inflater.feed(data[index : index + 1])
        assert inflater.finish() == b"hello, world"

    def test_exact_limit_is_allowed(self) -> None:
        """Exactly ``limit`` inflated bytes are accepted."""
        inflater = GzipInflater(limit=5)
        inflater.feed(gzip.compress(b"12345"))
        assert inflater.finish() == b"12345"

    def test_truncated_stream_is_refused(self) -> None:
        """A gzip stream cut short is reported at finish()."""
        inflater = GzipInflater(limit=100)
        inflater.feed(gzip.compress(b"hello")[:-4])
        with pytest.raises(RequestError, match="truncated"):
            inflater.finish()


class TestBasicAuth:
    @pytest.mark.parametrize(
        ("header", "user"),
        [
            (None, None),
            ("Basic a2V5Og==", "key"),  # "key:"
            ("basic a2V5OnB3", "key"),  # "key:pw" (the password is ignored)
            ("Basic a2V5", "key"),  # "key" with no colon at all
            ("Basic Og==", None),  # ":" (empty user)
        ],
    )
    def test_user_name_is_the_write_key(self, header: str, user: str) -> None:
        """The Basic user name is the key; an empty one counts as none."""
        assert basic_user(header) == user

    @pytest.mark.parametrize(
        ("header", "error"),
        [
            ("Bearer abc", "only HTTP Basic auth is supported"),
            ("Basic !!!", "malformed HTTP Basic credentials"),
            ("Basic /w==", "malformed HTTP Basic credentials"),  # not UTF-8
        ],
    )
    def test_unusable_headers_raise(self, header: str, error: str) -> None:
        """Other schemes, bad base64 and non-UTF-8 credentials raise ValueError, every time."""
        for _ in range(2):  # the second answer comes from the decoded-header cache
            with pytest.raises(ValueError, match=error):
                basic_user(header)

    def test_repeated_headers_give_the_same_user_and_refusal(self) -> None:
        """Headers read again (cached) name the same user; a NUL in one is still refused."""
        nul = "Basic " + base64.b64encode(b"k\x00ey:").decode()
        for _ in range(3):
            assert basic_user("Basic a2V5Og==") == "key"
            assert basic_user("Basic b3RoZXI6") == "other"
            with pytest.raises(ValueError, match="contains a NUL character"):
                basic_user(nul)
