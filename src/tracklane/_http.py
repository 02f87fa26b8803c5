"""A minimal HTTP/1.1 client for one job: POST a body, read the answer, keep the connection.

The answer is parsed by :class:`ResponseParser`, which does no I/O (bytes in, a
:class:`Response` out), so the blocking :class:`Connection` here and the asyncio one in
``_aio_http`` read the same way. It speaks just enough HTTP/1.1: ``Content-Length`` and
chunked bodies, bodies delimited by the connection closing, 1xx interim answers,
keep-alive, and the answer to a CONNECT (a proxy tunnel). Errors are ``OSError``
subclasses.

Why not h11, the sans-I/O parser httpx uses: delivery runs beside the application (in a
thread sharing the GIL, or on its event loop), so every microsecond of Python per request
is taken from request handlers. ``bench/http_parser.py`` frames one POST of a 47 KB batch
and parses its answer, interleaved runs, median of 5 x 20,000 (2 shared cores, loaded):

    ======================  ==============  ==========  =====
    answer                  ResponseParser  h11 0.16.0  ratio
    ======================  ==============  ==========  =====
    200, 16-byte body       10.5 µs         154 µs      14.6x
    400, chunked body       13.8 µs         178 µs      12.8x
    ======================  ==============  ==========  =====

h11 would cost more per batch than the rest of delivery together (more than the
standard library's ``http.client``, which this module replaced for its CPU cost), so the
hand-written parser stays. Its framing is checked by ``tests/test_http.py``.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["Connection", "ConnectionClosed", "ProtocolError", "Response", "ResponseParser"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024  # we only read error texts; a longer answer ends the connection
_CHUNK = 65536
_SENDMSG = hasattr(socket.socket, "sendmsg")


class ProtocolError(OSError):
    """The server's answer is not valid HTTP/1.x."""


class ConnectionClosed(ProtocolError):
    """The server closed the connection before a complete answer."""


@dataclass(frozen=True)
class Response:
    """A status, the headers (lower-case names), the body, and whether the connection lives on."""

    status: int
    headers: Dict[str, str]
    body: bytes
    keep_alive: bool


class ResponseParser:
    """Bytes in, one answer out: feed what the socket gave, then ask for the answer.

    ``feed(b"")`` says the server closed the connection. :meth:`next` returns the answer
    once it is complete (skipping 1xx interim answers), None while more bytes are needed,
    and raises :class:`ProtocolError` for what is not HTTP/1.x.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Add bytes read from the connection; ``b""`` means it was closed."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def clear(self) -> None:
        """Forget buffered bytes (a new connection, or the start of a tunnel)."""
        self._buffer.clear()
        self._eof = False

    def next(self, head_only: bool = False) -> Optional[Response]:
        """The complete answer, or None; ``head_only`` for the answer to CONNECT."""
        while True:
            head = self._head()
            if head is None:
                return None
            status, version, headers, end = head
            if 100 <= status < 200 and status != 101:
                del self._buffer[:end]  # an interim answer (100 Continue, 103 Early Hints)
                continue
            break
        if head_only:
            del self._buffer[:end]
            return Response(status, headers, b"", True)
        framed = self._body(status, headers, end)
        if framed is None:
            return None
        body, consumed, complete = framed
        del self._buffer[:consumed]
        connection = headers.get("connection", "").lower()
        keep = complete and (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        return Response(status, headers, body, keep)

    def _need_more(self) -> None:
        if self._eof:
            raise ConnectionClosed("the server closed the connection")

    def _head(self) -> Optional[Tuple[int, str, Dict[str, str], int]]:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                raise ProtocolError("the answer's headers are too long")
            self._need_more()
            return None
        head = bytes(buffer[:end]).decode("latin-1")
        status_line, _, rest = head.partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        headers: Dict[str, str] = {}
        for line in rest.split("\r\n") if rest else ():
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return int(parts[1]), parts[0], headers, end + 4

    def _body(
        self, status: int, headers: Dict[str, str], start: int
    ) -> Optional[Tuple[bytes, int, bool]]:
        """The body, the bytes consumed, and whether the connection is at a clean boundary."""
        if status in (204, 304):
            return b"", start, True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked(start)
        length_text = headers.get("content-length")
        buffer = self._buffer
        if length_text is not None:
            try:
                length = int(length_text.split(",")[0].strip())
            except ValueError:
                raise ProtocolError(f"bad Content-Length: {length_text!r}") from None
            if length > _MAX_BODY:
                return b"", len(buffer), False  # not worth reading; the connection is dropped
            if len(buffer) - start < length:
                self._need_more()
                return None
            return bytes(buffer[start : start + length]), start + length, True
        # Delimited by the connection closing.
        if not self._eof and len(buffer) - start <= _MAX_BODY:
            return None
        return bytes(buffer[start : start + _MAX_BODY]), len(buffer), False

    def _chunked(self, at: int) -> Optional[Tuple[bytes, int, bool]]:
        buffer = self._buffer
        parts: List[bytes] = []
        total = 0
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                if len(buffer) - at > _MAX_HEAD:
                    raise ProtocolError("a chunk header is too long")
                self._need_more()
                return None
            size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size: {size_text[:20]!r}") from None
            at = line_end + 2
            if size == 0:
                while True:  # trailers, up to the empty line
                    line_end = buffer.find(b"\r\n", at)
                    if line_end < 0:
                        self._need_more()
                        return None
                    empty = line_end == at
                    at = line_end + 2
                    if empty:
                        return b"".join(parts), at, True
            total += size
            if total > _MAX_BODY:
                return b"".join(parts), len(buffer), False
            if len(buffer) < at + size + 2:
                self._need_more()
                return None
            parts.append(bytes(buffer[at : at + size]))
            at += size
            if buffer[at : at + 2] != b"\r\n":
                raise ProtocolError("a chunk is longer than its size says")
            at += 2


class Connection:
    """One blocking TCP (or TLS) connection to an origin, directly or through an HTTP proxy."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: Optional[Callable[[], ssl.SSLContext]],
        proxy: Optional[Tuple[str, int]] = None,
        proxy_headers: Optional[Dict[str, str]] = None,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._proxy = proxy
        self._proxy_headers = proxy_headers or {}
        self.sock: Optional[socket.socket] = None
        self._parser = ResponseParser()
        self._armed = -1.0

    def open(self, deadline: float) -> None:
        """Connect (through the proxy's CONNECT tunnel for TLS), then TLS-handshake."""
        address = self._proxy or (self.host, self.port)
        sock = socket.create_connection(address, timeout=_remaining(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            if self._proxy is not None and self._tls is not None:
                self._send(connect_request(self.host, self.port, self._proxy_headers), deadline)
                check_tunnel(self._read(deadline, head_only=True))
                self._parser.clear()
            if self._tls is not None:
                sock.settimeout(_remaining(deadline))
                self.sock = self._tls().wrap_socket(sock, server_hostname=self.host)
            self._armed = -1.0
        except BaseException:
            sock.close()
            self.sock = None
            raise

    def exchange(self, request: Union[bytes, Sequence[bytes]], deadline: float) -> Response:
        """Send one complete request and read its answer.

        ``request`` may be a sequence of parts (the head, the body): on a plain socket
        they go out in one ``sendmsg`` without being joined first, which saves the worker
        a copy of the body while it holds the GIL; over TLS they are joined.
        """
        self._send(request, deadline)
        return self._read(deadline)

    def close(self) -> None:
        """Close the socket; safe to call more than once."""
        sock, self.sock = self.sock, None
        self._parser.clear()
        if sock is not None:
            sock.close()

    # -- wire helpers ---------------------------------------------------------------

    def _arm(self, sock: socket.socket, deadline: float) -> None:
        """Bound the next socket operation by the deadline.

        Each blocking call may take the socket's timeout, so it must be about the time left;
        ``settimeout`` is a system call, so it is only made when that time moved by more
        than 50 ms (not between the steps of one quick request).
        """
        left = _remaining(deadline)
        if abs(left - self._armed) > 0.05:
            sock.settimeout(left)
            self._armed = left

    def _send(self, data: Union[bytes, Sequence[bytes]], deadline: float) -> None:
        sock = self._sock()
        self._arm(sock, deadline)
        if isinstance(data, (bytes, bytearray, memoryview)):
            sock.sendall(data)
        elif not _SENDMSG or isinstance(sock, ssl.SSLSocket):
            sock.sendall(b"".join(data))
        else:
            _send_parts(sock, data)

    def _sock(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionClosed("the connection is closed")
        return self.sock

    def _read(self, deadline: float, head_only: bool = False) -> Response:
        parser = self._parser
        while True:
            response = parser.next(head_only)
            if response is not None:
                return response
            sock = self._sock()
            self._arm(sock, deadline)
            parser.feed(sock.recv(_CHUNK))


def _send_parts(sock: socket.socket, parts: Sequence[bytes]) -> None:
    """``sendall`` of the parts one after the other, gathered by ``sendmsg`` (no join).

    The socket's timeout bounds each call, as for ``sendall``; a partial send continues
    with what is left (the kernel took part of the parts).
    """
    views = [memoryview(p) for p in parts if p]
    while views:
        sent = sock.sendmsg(views)
        if not sent:  # not expected of a stream socket with data to send; never spin
            raise ConnectionClosed("the connection took no bytes of the request")
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            del views[0]
        if views and sent:
            views[0] = views[0][sent:]


def connect_request(host: str, port: int, headers: Dict[str, str]) -> bytes:
    """The CONNECT request that opens a tunnel to ``host:port`` through a proxy."""
    target = f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_tunnel(response: Response) -> None:
    """Raise unless the proxy opened the tunnel."""
    if response.status != 200:
        raise ProtocolError(f"the proxy refused the tunnel: HTTP {response.status}")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("the deadline passed")
    return left
