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
import logging
import os
import ssl
import time
from typing import TYPE_CHECKING, Callable, Optional, Tuple

from ._http import ProtocolError, Response, ResponseParser, check_tunnel, connect_request
from ._transport import RequestFormat, is_stale, result_of, tls_context, token_source
from .config import Options
from .exceptions import OAuthError
from .transports import SendResult

if TYPE_CHECKING:
    from ._oauth import TokenSource

__all__ = ["AsyncHTTPTransport", "Follow"]

logger = logging.getLogger("tracklane")

Follow = Callable[[SendResult], Optional[Tuple[bytes, float]]]
"""Given the answer to the request in flight, the next ``(body, timeout)`` to send at once
on the same connection, or None to hand the answer to the task that awaits ``send``."""

_IDLE_STALE = 1.0
_GZIP_INLINE = 16 * 1024  # smaller bodies are compressed on the loop (well under 1 ms)


class _Reader(asyncio.Protocol):
    """Feeds what the socket receives into a parser and wakes the reader waiting on it.

    While a request of the delivery task is in flight, ``follow`` may be set: an answer
    complete in ``data_received`` is then given to it at once, and the next request it
    returns is written in the same loop turn, without waking the task (see ``Follow``).
    """

    def __init__(self) -> None:
        self.parser = ResponseParser()
        self.transport: Optional[asyncio.Transport] = None
        self._waiter: Optional[asyncio.Future[None]] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self.lost: Optional[BaseException] = None
        self.closed = False
        self.deadline = 0.0
        self.follow: Optional[Follow] = None
        self.framer: Optional[Callable[[bytes], Optional[bytes]]] = None
        self.answered: Optional[Response] = None  # taken by ``follow``'s hand-back
        self.unframed: Optional[Tuple[bytes, float]] = None  # to compress off the loop
        self.chained = 0  # requests written by ``follow`` since the exchange began

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self.follow is not None and self._follow():
            return  # the next request is on its way: the waiting task sleeps on
        self._wake()

    def _follow(self) -> bool:
        """An answer is complete: let ``follow`` settle it and write the next request."""
        waiter = self._waiter
        transport = self.transport
        follow = self.follow
        if waiter is None or waiter.done() or transport is None or follow is None:
            return False
        answer = self.parser.next(False)
        if answer is None:
            return False
        self.answered = answer
        if not answer.keep_alive or self.closed:
            return False  # the task takes it from here (the connection ends)
        try:
            following = follow(result_of(answer))
        except Exception:  # pragma: no cover - a bug must not kill the connection
            logger.exception("tracklane: unexpected error while settling an answer")
            return False
        if following is None:
            return False
        self.answered = None
        body, timeout = following
        request = self.framer(body) if self.framer is not None else None
        if request is None:
            self.unframed = (body, timeout)  # the task compresses it in a worker thread
            return False
        transport.write(request)
        self.chained += 1
        self.rearm(asyncio.get_running_loop().time() + max(timeout, 0.001))
        return True

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

    def rearm(self, deadline: float) -> None:
        """Wait for the next answer until ``deadline`` (loop time)."""
        self.deadline = deadline
        waiter = self._waiter
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            self._timer = asyncio.get_running_loop().call_at(deadline, _expire, waiter)

    async def response(self, deadline: float, head_only: bool = False) -> Response:
        """The next complete answer, waiting for bytes until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        self.deadline = deadline
        while True:
            answer, self.answered = self.answered, None
            if answer is None:
                answer = self.parser.next(head_only)
            if answer is not None:
                return answer
            if self.unframed is not None:
                raise _Unframed
            if loop.time() >= self.deadline:
                raise asyncio.TimeoutError("the deadline passed")
            # A timer on the waiter itself: one loop turn less per read than wait_for.
            waiter = self._waiter = loop.create_future()
            self._timer = loop.call_at(self.deadline, _expire, waiter)
            try:
                await waiter
            except asyncio.TimeoutError:
                # The answer may have come in the turn the deadline passed: it counts.
                late = self.answered or self.parser.next(head_only)
                if late is None:
                    raise
                self.answered = late
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._waiter = None


class _Unframed(Exception):
    """``follow`` gave a body that must be compressed off the loop before it is sent."""


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
    """Keeps one connection on the running loop and posts batches.

    With Basic auth (the write key), or with OAuth: a Bearer access token from the blocking
    ``TokenSource``, asked for in a worker thread when one is due (never on the loop).
    """

    def __init__(self, options: Options, tokens_of: Optional[AsyncHTTPTransport] = None) -> None:
        self._options = options
        self._format = RequestFormat(options)
        self._route = self._format.route
        self._conn: Optional[_Connection] = None
        self._ssl: Optional[ssl.SSLContext] = None
        self._last_used = 0.0
        self._pid = os.getpid()
        self._lock: Optional[asyncio.Lock] = None
        self._lock_loop: Optional[asyncio.AbstractEventLoop] = None
        self._tokens: Optional[TokenSource] = None
        if tokens_of is not None:  # another connection of the same client: one token
            self._tokens = tokens_of._tokens
        elif options.oauth:
            # The blocking token source, called in a worker thread when a token is due.
            self._tokens = token_source(options, self._blocking_context)

    async def send(self, body: bytes, timeout: float) -> SendResult:
        """POST ``body`` to ``/v1/batch``; never raises for network trouble."""
        return await self.send_chain(body, timeout, None)

    async def send_chain(self, body: bytes, timeout: float, follow: Optional[Follow]) -> SendResult:
        """Like :meth:`send`; with ``follow``, each answer goes to it as it arrives.

        The answer returned is the one to the last request sent: ``follow`` declined it
        (or the request failed). Requests written for ``follow`` are never sent twice:
        only the first request of a call is retried on a fresh connection, and only if
        its kept-alive connection had been idle (see ``is_stale``).
        """
        loop = asyncio.get_running_loop()
        if self._tokens is not None:
            return await self._send_with_token(loop, self._tokens, body, timeout)
        deadline = loop.time() + max(timeout, 0.001)
        request = await self._framed(loop, body)
        return await self._post(loop, request, deadline, follow)

    async def _send_with_token(
        self, loop: asyncio.AbstractEventLoop, tokens: TokenSource, body: bytes, timeout: float
    ) -> SendResult:
        """Send with an OAuth access token; after a 401, once more with a new token.

        A token that is due is fetched by the blocking token source in a worker thread,
        within this request's deadline: the loop never waits on the token server.
        """
        deadline = loop.time() + max(timeout, 0.001)
        content = await self._gzipped(loop, body)
        for attempt in (1, 2):
            token = tokens.fresh()
            if token is None:
                until = time.monotonic() + max(deadline - loop.time(), 0.001)
                try:
                    token = await loop.run_in_executor(None, tokens.token, until)
                except OAuthError as exc:  # a failed attempt like any other: retried, counted
                    return SendResult(error=exc, retry_after=exc.retry_after)
            request = self._format.frame_bearer(content, token)
            result = await self._post(loop, request, deadline, None)
            if result.status != 401 or attempt == 2:
                return result
            logger.info("tracklane: HTTP 401 with the OAuth access token; fetching a new one")
            tokens.reject(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(
        self,
        loop: asyncio.AbstractEventLoop,
        request: bytes,
        deadline: float,
        follow: Optional[Follow],
    ) -> SendResult:
        async with self._guard(loop):
            for attempt in (1, 2):
                reused = False
                idle = 0.0
                reader: Optional[_Reader] = None
                try:
                    conn, reused = await self._connection(loop, deadline)
                    idle = time.monotonic() - self._last_used
                    reader = conn.reader
                    response = await self._exchange(loop, conn, request, deadline, follow)
                except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                    chained = reader is not None and reader.chained > 0
                    self._discard()
                    if (
                        reused
                        and not chained
                        and attempt == 1
                        and idle >= _IDLE_STALE
                        and is_stale(exc)
                    ):
                        continue
                    if isinstance(exc, asyncio.TimeoutError) and not isinstance(exc, OSError):
                        exc = TimeoutError("the request's deadline passed")
                    return SendResult(error=exc)
                self._last_used = time.monotonic()
                if not response.keep_alive:
                    self._discard()
                return result_of(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _gzipped(self, loop: asyncio.AbstractEventLoop, body: bytes) -> bytes:
        """``body`` as sent: gzipped if the option is on (in a worker thread when large)."""
        if self._options.gzip:
            if len(body) > _GZIP_INLINE:
                return await loop.run_in_executor(None, gzip_module.compress, body, 6)
            return gzip_module.compress(body, 6)
        return body

    async def _framed(self, loop: asyncio.AbstractEventLoop, body: bytes) -> bytes:
        """The request for ``body`` with Basic auth."""
        return self._format.frame(await self._gzipped(loop, body))

    def _blocking_context(self) -> ssl.SSLContext:
        """The TLS context, for the token source's thread (built there if still missing)."""
        if self._ssl is None:
            self._ssl = tls_context(self._options.ca_bundle)
        return self._ssl

    def _framed_now(self, body: bytes) -> Optional[bytes]:
        """The request for ``body`` without leaving the loop, or None (gzip it off the loop)."""
        if self._options.gzip:
            if len(body) > _GZIP_INLINE:
                return None
            body = gzip_module.compress(body, 6)
        return self._format.frame(body)

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        request: bytes,
        deadline: float,
        follow: Optional[Follow],
    ) -> Response:
        reader = conn.reader
        reader.chained = 0
        reader.answered = None
        reader.unframed = None
        if follow is None:
            return await conn.exchange(request, deadline)
        reader.follow = follow
        reader.framer = self._framed_now
        try:
            response_deadline = deadline
            next_request = request
            while True:
                try:
                    return await conn.exchange(next_request, response_deadline)
                except _Unframed:
                    assert reader.unframed is not None
                    (body, timeout), reader.unframed = reader.unframed, None
                    reader.chained += 1
                    next_request = await self._framed(loop, body)
                    response_deadline = loop.time() + max(timeout, 0.001)
        finally:
            reader.follow = None
            reader.framer = None

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
