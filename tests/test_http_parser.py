"""The sans-I/O answer parser: the same answer however the bytes arrive."""

from __future__ import annotations

from typing import List, Optional

import pytest

from tracklane._http import ConnectionClosed, ProtocolError, Response, ResponseParser

ANSWERS = {
    "length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n" + b'{"success":true}',
        200,
        b'{"success":true}',
        True,
    ),
    "chunked": (
        b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        400,
        b"hello world",
        True,
    ),
    "interim": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n",
        204,
        b"",
        True,
    ),
    "close": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
        False,
    ),
    "http10": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
    "http10-keep": (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
        True,
    ),
}


def feed_in_pieces(raw: bytes, size: int, eof: bool = False) -> Optional[Response]:
    parser = ResponseParser()
    response = None
    for start in range(0, len(raw), size):
        assert response is None  # nothing is returned before the last byte
        parser.feed(raw[start : start + size])
        response = parser.next()
    if eof and response is None:
        parser.feed(b"")
        response = parser.next()
    return response


@pytest.mark.parametrize("name", sorted(ANSWERS))
@pytest.mark.parametrize("size", [1, 3, 7, 10_000])
def test_same_answer_however_the_bytes_arrive(name, size):
    """An answer fed one byte at a time, in odd pieces or whole parses the same."""
    raw, status, body, keep = ANSWERS[name]
    response = feed_in_pieces(raw, size)
    assert response is not None
    assert (response.status, response.body, response.keep_alive) == (status, body, keep)


def test_close_delimited_body_ends_at_eof():
    """Without length or chunking, the body is everything until the server closes."""
    raw = b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\n\r\nsomething broke"
    response = feed_in_pieces(raw, 4, eof=True)
    assert response is not None
    assert (response.status, response.body, response.keep_alive) == (500, b"something broke", False)


def test_two_answers_in_one_read_are_returned_in_turn():
    """Bytes of the next answer stay buffered for the next call."""
    parser = ResponseParser()
    one = ANSWERS["length"][0]
    parser.feed(one + one)
    first, second = parser.next(), parser.next()
    assert first is not None
    assert second is not None
    assert parser.next() is None


def test_connect_answer_is_head_only():
    """The answer to CONNECT has no body even without a length; the tunnel bytes follow it."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03")
    response = parser.next(head_only=True)
    assert response is not None
    assert response.status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"",
    ],
)
def test_closed_midway_is_connection_closed(raw):
    """A connection closed before the answer is complete raises ConnectionClosed."""
    parser = ResponseParser()
    if raw:
        parser.feed(raw)
        assert parser.next() is None
    parser.feed(b"")
    with pytest.raises(ConnectionClosed):
        parser.next()


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
    ],
)
def test_garbage_is_a_protocol_error(raw):
    """What is not HTTP/1.x framing raises ProtocolError, never hangs."""
    parser = ResponseParser()
    parser.feed(raw)
    with pytest.raises(ProtocolError):
        parser.next()


def test_huge_answers_end_the_connection():
    """A body over 1 MB is not read: the answer comes back with the connection marked done."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 502 Bad\r\nContent-Length: 99999999\r\n\r\nxx")
    response = parser.next()
    assert response is not None
    assert (response.status, response.keep_alive) == (502, False)
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 502 Bad\r\n" + b"X: " + b"y" * 70_000)
    with pytest.raises(ProtocolError):
        parser.next()


def test_many_chunks_are_joined():
    """Many small chunks arrive as one body."""
    chunks: List[bytes] = [b"%x\r\n%s\r\n" % (3, b"abc")] * 50
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"
    response = feed_in_pieces(raw, 11)
    assert response is not None
    assert response.body == b"abc" * 50
