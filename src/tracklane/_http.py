"""A minimal HTTP/1.1 client for one job: POST a body, read the answer, keep the connection.

Delivery runs in a background thread that shares the GIL with the application, so every
microsecond of Python it runs per request is taken from request handlers. The standard
library's ``http.client`` spends about 100 µs of Python per request (seven ``putheader``
calls, headers parsed by the ``email`` package); this module spends a fraction of that: the
request head is prepared once, written with the body in one ``sendall``, and only the
status line and the few headers delivery needs are parsed. It speaks just enough HTTP/1.1:
``Content-Length`` and chunked bodies, bodies delimited by the connection closing, 1xx
interim answers, keep-alive, TLS (always verified) and CONNECT tunnels through a proxy.
Every read and write has a deadline. Errors are ``OSError`` subclasses.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

__all__ = ["Connection", "ConnectionClosed", "ProtocolError", "Response"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024  # we only read error texts; a longer answer ends the connection
_CHUNK = 65536


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


class Connection:
    """One TCP (or TLS) connection to an origin, directly or through an HTTP proxy."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: Optional[Callable[[], ssl.SSLContext]],
        proxy: Optional[tuple[str, int]] = None,
        proxy_headers: Optional[Dict[str, str]] = None,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._proxy = proxy
        self._proxy_headers = proxy_headers or {}
        self.sock: Optional[socket.socket] = None
        self._buffer = bytearray()
        self._armed = -1.0

    def open(self, deadline: float) -> None:
        """Connect (through the proxy's CONNECT tunnel for TLS), then TLS-handshake."""
        address = self._proxy or (self.host, self.port)
        sock = socket.create_connection(address, timeout=_remaining(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
            if self._proxy is not None and self._tls is not None:
                self._connect_tunnel(deadline)
            if self._tls is not None:
                sock.settimeout(_remaining(deadline))
                self.sock = self._tls().wrap_socket(sock, server_hostname=self.host)
            self._armed = -1.0
        except BaseException:
            sock.close()
            self.sock = None
            raise

    def _connect_tunnel(self, deadline: float) -> None:
        target = f"{self.host}:{self.port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        lines += [f"{k}: {v}" for k, v in self._proxy_headers.items()]
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), deadline)
        status, _, _ = self._read_head(deadline)
        if status != 200:
            raise ProtocolError(f"the proxy refused the tunnel: HTTP {status}")
        self._buffer.clear()

    def exchange(self, request: bytes, deadline: float) -> Response:
        """Send one complete request and read its answer."""
        self._send(request, deadline)
        while True:
            status, version, headers = self._read_head(deadline)
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            break
        body, complete = self._read_body(status, headers, deadline)
        connection = headers.get("connection", "").lower()
        keep = complete and (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        return Response(status, headers, body, keep)

    def close(self) -> None:
        """Close the socket; safe to call more than once."""
        sock, self.sock = self.sock, None
        self._buffer.clear()
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

    def _send(self, data: bytes, deadline: float) -> None:
        sock = self._sock()
        self._arm(sock, deadline)
        sock.sendall(data)

    def _sock(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionClosed("the connection is closed")
        return self.sock

    def _fill(self, deadline: float) -> None:
        sock = self._sock()
        self._arm(sock, deadline)
        chunk = sock.recv(_CHUNK)
        if not chunk:
            raise ConnectionClosed("the server closed the connection")
        self._buffer += chunk

    def _read_head(self, deadline: float) -> tuple[int, str, Dict[str, str]]:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buffer) > _MAX_HEAD:
                raise ProtocolError("the answer's headers are too long")
            self._fill(deadline)
        head = bytes(buffer[:end]).decode("latin-1")
        del buffer[: end + 4]
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
        return int(parts[1]), parts[0], headers

    def _read_body(
        self, status: int, headers: Dict[str, str], deadline: float
    ) -> tuple[bytes, bool]:
        """The body, and whether the connection is at a clean boundary afterwards."""
        if status in (204, 304):
            return b"", True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked(deadline)
        length_text = headers.get("content-length")
        if length_text is not None:
            try:
                length = int(length_text.split(",")[0].strip())
            except ValueError:
                raise ProtocolError(f"bad Content-Length: {length_text!r}") from None
            if length > _MAX_BODY:
                return b"", False  # not worth reading; the connection is dropped instead
            return self._read_exact(length, deadline), True
        return self._read_to_close(deadline), False

    def _read_exact(self, length: int, deadline: float) -> bytes:
        buffer = self._buffer
        while len(buffer) < length:
            self._fill(deadline)
        data = bytes(buffer[:length])
        del buffer[:length]
        return data

    def _read_line(self, deadline: float) -> bytes:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                return line
            if len(buffer) > _MAX_HEAD:
                raise ProtocolError("a chunk header is too long")
            self._fill(deadline)

    def _read_chunked(self, deadline: float) -> tuple[bytes, bool]:
        parts: list[bytes] = []
        total = 0
        while True:
            size_text = self._read_line(deadline).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size: {size_text[:20]!r}") from None
            if size == 0:
                while self._read_line(deadline):  # trailers, up to the empty line
                    pass
                return b"".join(parts), True
            total += size
            if total > _MAX_BODY:
                return b"".join(parts), False
            parts.append(self._read_exact(size, deadline))
            if self._read_line(deadline):
                raise ProtocolError("a chunk is longer than its size says")

    def _read_to_close(self, deadline: float) -> bytes:
        try:
            while len(self._buffer) <= _MAX_BODY:
                self._fill(deadline)
        except ConnectionClosed:
            pass
        data = bytes(self._buffer[:_MAX_BODY])
        self._buffer.clear()
        return data


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("the deadline passed")
    return left
