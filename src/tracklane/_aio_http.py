"""Posting one request body on the event loop: ``AsyncHTTPTransport``.

The same wire behaviour as ``HTTPTransport`` (one kept-alive connection, TLS always
verified, HTTP proxies with CONNECT tunnels, gzip, a deadline on every request, a silent
reconnect when an idle kept-alive connection was closed by the server), driven by
asyncio: the socket is an asyncio transport whose bytes go into the same sans-I/O
``ResponseParser`` the blocking connection uses. Nothing here blocks the loop: DNS goes
through the loop's resolver, the TLS context is built once in a worker thread, and a large
body is gzipped in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip as gzip_module
import os
import ssl
import time
from typing import Optional

from ._http import ProtocolError, Response, ResponseParser, check_tunnel, connect_request
from ._transport import RequestFormat, is_stale, result_of, tls_context
from .config import Options
from .transports import SendResult

__all__ = ["AsyncHTTPTransport"]

_IDLE_STALE = 1.0
_GZIP_INLINE = 16 * 1024  # smaller bodies are compressed on the loop (well under 1 ms)


class _Reader(asyncio.Protocol):
    """Feeds what the socket receives into a parser and wakes the reader waiting on it."""

    def __init__(self) -> None:
        self.parser = ResponseParser()
        self.transport: Optional[asyncio.Transport] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self.lost: Optional[BaseException] = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        self._wake()

    def eof_received(self) -> Optional[bool]:
        self.parser.feed(b"")
        self._wake()
        return None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self.lost = exc
        self.parser.feed(b"")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def response(self, deadline: float, head_only: bool = False) -> Response:
        """The next complete answer, waiting for bytes until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        while True:
            answer = self.parser.next(head_only)
            if answer is not None:
                return answer
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError("the deadline passed")
            # A timer on the waiter itself: one loop turn less per read than wait_for.
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(left, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError("the deadline passed"))


class _Connection:
    """One connection on the loop: its transport and the protocol reading from it."""

    def __init__(self, reader: _Reader, loop: asyncio.AbstractEventLoop) -> None:
        self.reader = reader
        self.loop = loop

    @property
    def usable(self) -> bool:
        transport = self.reader.transport
        return not self.reader.closed and transport is not None and not transport.is_closing()

    async def exchange(self, request: bytes, deadline: float) -> Response:
        transport = self.reader.transport
        if transport is None or self.reader.closed:
            raise ProtocolError("the connection is closed")
        transport.write(request)
        return await self.reader.response(deadline)

    def close(self) -> None:
        transport = self.reader.transport
        if transport is not None:
            transport.abort()  # no graceful close: nothing of ours is left to send


class AsyncHTTPTransport:
    """Keeps one connection on the running loop and posts batches with Basic auth."""

    def __init__(self, options: Options) -> None:
        self._options = options
        self._format = RequestFormat(options)
        self._route = self._format.route
        self._conn: Optional[_Connection] = None
        self._ssl: Optional[ssl.SSLContext] = None
        self._last_used = 0.0
        self._pid = os.getpid()
        self._lock: Optional[asyncio.Lock] = None
        self._lock_loop: Optional[asyncio.AbstractEventLoop] = None

    async def send(self, body: bytes, timeout: float) -> SendResult:
        """POST ``body`` to ``/v1/batch``; never raises for network trouble."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.001)
        if self._options.gzip:
            if len(body) > _GZIP_INLINE:
                body = await loop.run_in_executor(None, gzip_module.compress, body, 6)
            else:
                body = gzip_module.compress(body, 6)
        request = self._format.frame(body)
        async with self._guard(loop):
            for attempt in (1, 2):
                reused = False
                try:
                    conn, reused = await self._connection(loop, deadline)
                    response = await conn.exchange(request, deadline)
                except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    idle = time.monotonic() - self._last_used
                    self._discard()
                    if reused and attempt == 1 and idle >= _IDLE_STALE and is_stale(exc):
                        continue
                    if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, OSError):
                        exc = TimeoutError("the request's deadline passed")
                    return SendResult(error=exc)
                self._last_used = time.monotonic()
                if not response.keep_alive:
                    self._discard()
                return result_of(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _guard(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
        """One request at a time on the connection (a lock of the current loop)."""
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    async def _connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> tuple[_Connection, bool]:
        pid = os.getpid()
        if self._pid != pid:  # inherited over fork: the socket is the parent's
            self._conn = None
            self._pid = pid
        conn = self._conn
        if conn is not None and conn.loop is loop and conn.usable:
            return conn, True
        if conn is not None:
            self._discard()  # a closed connection, or one of a loop that is gone
        conn = await self._open(loop, deadline)
        self._conn = conn
        return conn, False

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        route = self._route
        tls = route.scheme == "https"
        context = await self._context(loop) if tls else None
        address = route.proxy or (route.host, route.port)
        reader = _Reader()
        direct_tls = context if route.proxy is None else None
        await asyncio.wait_for(
            loop.create_connection(
                lambda: reader,
                address[0],
                address[1],
                ssl=direct_tls,
                server_hostname=route.host if direct_tls is not None else None,
            ),
            max(deadline - loop.time(), 0.001),
        )
        conn = _Connection(reader, loop)
        try:
            if route.proxy is not None and context is not None:
                transport = reader.transport
                assert transport is not None
                transport.write(connect_request(route.host, route.port, route.proxy_headers or {}))
                check_tunnel(await reader.response(deadline, head_only=True))
                reader.parser.clear()
                secured = await asyncio.wait_for(
                    loop.start_tls(transport, reader, context, server_hostname=route.host),
                    max(deadline - loop.time(), 0.001),
                )
                reader.transport = secured
        except BaseException:
            conn.close()
            raise
        return conn

    async def _context(self, loop: asyncio.AbstractEventLoop) -> ssl.SSLContext:
        if self._ssl is None:
            # Loading the system store and certifi's bundle takes milliseconds: not on the loop.
            self._ssl = await loop.run_in_executor(None, tls_context, self._options.ca_bundle)
        return self._ssl

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(RuntimeError):  # the connection's loop may be closed
                conn.close()

    def abort(self) -> None:
        """End the request in progress at once (shutdown's deadline passed)."""
        self._discard()

    async def aclose(self) -> None:
        """Close the connection."""
        self._discard()
