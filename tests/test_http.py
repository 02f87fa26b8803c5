"""The minimal HTTP/1.1 client: framing of answers, keep-alive, deadlines, bad answers."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterator, List

import pytest

from tracklane._http import Connection, ConnectionClosed, ProtocolError

REQUEST = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


class RawServer:
    """Answers each connection's requests with scripted raw bytes; records what it read."""

    def __init__(self, answers: List[bytes], close_after: bool = False) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.received: List[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            while self.answers:
                data = b""
                while not data.endswith(b"{}"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.received.append(data)
                answer = self.answers.pop(0)
                if answer == b"<hang>":
                    time.sleep(2)
                    return
                conn.sendall(answer)
                if self.close_after:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., Connection]]:
    servers: List[RawServer] = []

    def make(*answers: bytes, close_after: bool = False) -> Connection:
        server = RawServer(list(answers), close_after)
        servers.append(server)
        conn = Connection("127.0.0.1", server.port, None)
        conn.open(time.monotonic() + 5)
        return conn

    yield make
    for server in servers:
        server.close()


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_content_length_answers_keep_the_connection(raw):
    """Two requests on one connection, each answer framed by Content-Length."""
    conn = raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nbusy",
    )
    first = conn.exchange(REQUEST, deadline())
    second = conn.exchange(REQUEST, deadline())
    assert (first.status, first.body, first.keep_alive) == (200, b"{}", True)
    assert (second.status, second.body) == (503, b"busy")
    assert second.headers["retry-after"] == "3"
    conn.close()


def test_chunked_answer(raw):
    """A chunked body is reassembled, trailers are skipped, the connection stays usable."""
    conn = raw(
        b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    answer = conn.exchange(REQUEST, deadline())
    assert answer.body == b"hello world"
    assert answer.keep_alive
    assert conn.exchange(REQUEST, deadline()).status == 200
    conn.close()


def test_interim_answers_are_skipped(raw):
    """A 100 Continue or 103 before the real answer is passed over."""
    conn = raw(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert conn.exchange(REQUEST, deadline()).status == 200
    conn.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_answers_that_end_the_connection(raw, answer):
    """Connection: close, or HTTP/1.0 without keep-alive, means a new connection next time."""
    conn = raw(answer)
    assert conn.exchange(REQUEST, deadline()).keep_alive is False
    conn.close()


def test_body_delimited_by_close(raw):
    """Without a length the body runs to the end of the connection."""
    conn = raw(b"HTTP/1.1 500 Oops\r\n\r\nsomething broke", close_after=True)
    answer = conn.exchange(REQUEST, deadline())
    assert (answer.status, answer.body, answer.keep_alive) == (500, b"something broke", False)
    conn.close()


def test_closed_before_answering(raw):
    """A server that closes without an answer raises ConnectionClosed (an OSError)."""
    conn = raw(b"", close_after=True)
    with pytest.raises(ConnectionClosed):
        conn.exchange(REQUEST, deadline())
    conn.close()


@pytest.mark.parametrize(
    "answer",
    [b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"],
)
def test_garbage_is_a_protocol_error(raw, answer):
    """A malformed status line or header raises ProtocolError (an OSError)."""
    conn = raw(answer)
    with pytest.raises(ProtocolError):
        conn.exchange(REQUEST, deadline())
    conn.close()


def test_deadline_is_kept(raw):
    """A server that never answers fails the exchange at its deadline."""
    conn = raw(b"<hang>")
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        conn.exchange(REQUEST, deadline(0.3))
    assert time.monotonic() - started < 1.5
    conn.close()


class _CountingSocket(socket.socket):
    """A socket that records how many bytes each ``sendmsg`` call took."""

    sent: List[int]

    def sendmsg(self, *args: object) -> int:  # type: ignore[override]
        taken: int = super().sendmsg(*args)  # type: ignore[arg-type]
        self.sent.append(taken)
        return taken


def test_a_request_in_parts_arrives_whole_after_partial_sends():
    """Head and body sent gathered (no join) arrive byte for byte, even when the kernel
    takes them a piece at a time."""
    from tracklane._http import _send_parts

    plain, right = socket.socketpair()
    left = _CountingSocket(plain.family, plain.type, fileno=plain.detach())
    left.sent = []
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    left.settimeout(10.0)  # as the connection does: sendmsg then sends what fits and says so
    parts = [b"HEAD\r\n\r\n", b"", bytes(range(256)) * 2000, b"tail"]
    received = bytearray()

    def read_all() -> None:
        while len(received) < sum(map(len, parts)):
            chunk = right.recv(3000)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        _send_parts(left, parts)
        reader.join(10)
    finally:
        left.close()
        right.close()
    assert bytes(received) == b"".join(parts)
    assert len(left.sent) > 1  # the partial sends this test is about did happen


def test_exchange_accepts_the_request_in_parts(raw):
    """A request given as (head, body) is sent as one request and answered like a whole one."""
    conn = raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    head, body = REQUEST.split(b"\r\n\r\n")
    answer = conn.exchange((head + b"\r\n\r\n", body), deadline())
    conn.close()
    assert answer.status == 200
    assert answer.body == b"ok"
