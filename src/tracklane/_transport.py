"""Posting one request body over a kept-alive HTTP/1.1 connection.

The worker holds the GIL for every microsecond of Python it runs per request, time taken
from the application's threads; measured per 47 KB batch, httpx costs about 360 µs of CPU,
the standard library's ``http.client`` about 100 µs, and ``_http.Connection`` far less.
This module adds what delivery needs around it: one persistent connection per process,
TLS that is always verified (system store plus certifi's bundle, or a CA bundle of your
own), HTTP proxies (CONNECT tunnels for HTTPS) from the ``proxies`` option or the
environment, gzip, a deadline on every request, and a fresh connection after fork.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip as gzip_module
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlsplit

from ._core.retry import parse_retry_after
from ._http import Connection, ConnectionClosed, Response
from ._version import __version__
from .config import Options, is_loopback
from .exceptions import ConfigurationError, OAuthError
from .transports import SendResult

if TYPE_CHECKING:
    from ._oauth import TokenSource

__all__ = ["HTTPTransport", "RequestFormat", "SendResult", "is_stale", "result_of", "tls_context"]

logger = logging.getLogger("tracklane")
_warned_plain_http: set[str] = set()
_IDLE_STALE = 1.0  # seconds idle after which a failing kept-alive connection counts as stale
_LENGTH = b"\r\nContent-Length: "


@dataclass(frozen=True)
class _Route:
    """Where to connect, and what to put on the request line, for one target URL."""

    scheme: str
    host: str
    port: int
    target: str
    proxy: Optional[Tuple[str, int]] = None  # host and port of the (http://) proxy
    proxy_headers: Optional[Dict[str, str]] = None


class RequestFormat:
    """The bytes of a batch request: a head built once, then Content-Length and the body.

    Shared by the blocking and the asyncio transports, so both send the same request.
    """

    def __init__(self, options: Options) -> None:
        self.url = options.batch_url
        route = self.route = _route(self.url, options.proxies)
        token = base64.b64encode(f"{options.write_key}:".encode()).decode("ascii")
        host_header = route.host if route.port in (80, 443) else f"{route.host}:{route.port}"
        if ":" in route.host:  # an IPv6 literal
            host_header = f"[{route.host}]:{route.port}"
        lines = [
            f"POST {route.target} HTTP/1.1",
            f"Host: {host_header}",
            "Content-Type: application/json",
            f"User-Agent: tracklane/{__version__}",
            "Connection: keep-alive",
        ]
        if options.gzip:
            lines.append("Content-Encoding: gzip")
        if route.scheme == "http" and route.proxy_headers:
            lines += [f"{k}: {v}" for k, v in route.proxy_headers.items()]
        # Everything but Content-Length (and an OAuth token) is the same for every request:
        # built once.
        self.head_start = ("\r\n".join(lines) + "\r\nAuthorization: ").encode("latin-1")
        self.head = self.head_start + f"Basic {token}".encode("latin-1") + _LENGTH
        plain = self.url.startswith("http://") and not is_loopback(self.url)
        if plain and options.host not in _warned_plain_http:
            _warned_plain_http.add(options.host)
            logger.warning("tracklane: sending to %s over plain http (not TLS)", options.host)

    def frame(self, content: bytes) -> bytes:
        """The complete request for ``content`` (already gzipped if the option is on)."""
        return b"".join((self.head, str(len(content)).encode("ascii"), b"\r\n\r\n", content))

    def frame_parts(self, content: bytes) -> Tuple[bytes, bytes]:
        """The request for ``content`` as (head, content): sent gathered, never joined."""
        return b"".join((self.head, str(len(content)).encode("ascii"), b"\r\n\r\n")), content

    def frame_bearer(self, content: bytes, token: str) -> bytes:
        """The request for ``content`` with an OAuth access token instead of Basic auth."""
        head = b"".join((self.head_start, b"Bearer ", token.encode("ascii"), _LENGTH))
        return b"".join((head, str(len(content)).encode("ascii"), b"\r\n\r\n", content))


def result_of(response: Response) -> SendResult:
    """What an answer means for delivery: status, error text, Retry-After in seconds."""
    status = response.status
    text = response.body.decode("utf-8", "replace") if status >= 300 else ""
    return SendResult(
        status=status, body=text, retry_after=_retry_after(response.headers.get("retry-after"))
    )


class HTTPTransport:
    """Keeps one connection per process and posts batches with Basic auth."""

    def __init__(self, options: Options) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._conn: Optional[Connection] = None
        self._last_used = 0.0
        self._pid = os.getpid()
        self._format = RequestFormat(options)
        self._route = self._format.route
        self._ssl: Optional[ssl.SSLContext] = None
        self._tokens: Optional[TokenSource] = None
        if options.oauth:
            self._tokens = token_source(options, self._context)

    def send(self, body: bytes, timeout: float) -> SendResult:
        """POST ``body`` to ``/v1/batch``; never raises for network trouble."""
        content = gzip_module.compress(body, 6) if self._options.gzip else body
        deadline = time.monotonic() + max(timeout, 0.001)
        if self._tokens is not None:
            return self._send_with_token(self._tokens, content, deadline)
        return self._post(self._format.frame_parts(content), deadline)

    def _send_with_token(self, tokens: TokenSource, content: bytes, deadline: float) -> SendResult:
        """Send with an OAuth access token; after a 401, once more with a new token."""
        for attempt in (1, 2):
            try:
                token = tokens.token(deadline)
            except OAuthError as exc:  # a failed attempt like any other: retried, counted
                return SendResult(error=exc, retry_after=exc.retry_after)
            result = self._post(self._format.frame_bearer(content, token), deadline)
            if result.status != 401 or attempt == 2:
                return result
            logger.info("tracklane: HTTP 401 with the OAuth access token; fetching a new one")
            tokens.reject(token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, request: Union[bytes, Sequence[bytes]], deadline: float) -> SendResult:
        with self._lock:
            for attempt in (1, 2):
                reused = False
                idle = 0.0
                try:
                    conn, reused = self._connection(deadline)
                    idle = time.monotonic() - self._last_used  # before this request
                    response = conn.exchange(request, deadline)
                except OSError as exc:
                    self._discard()
                    # A kept-alive connection that sat idle may have been closed by the
                    # server meanwhile: no failure of the endpoint, so try once on a fresh
                    # connection. A connection in use a moment ago failing is a real fault,
                    # left to the retry policy (counted, with backoff).
                    if reused and attempt == 1 and idle >= _IDLE_STALE and is_stale(exc):
                        continue
                    return SendResult(error=exc)
                self._last_used = time.monotonic()
                if not response.keep_alive:
                    self._discard()
                return result_of(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self, deadline: float) -> Tuple[Connection, bool]:
        pid = os.getpid()
        if self._pid != pid:
            # Inherited over fork: the socket is the parent's. Forget it without closing.
            self._conn = None
            self._pid = pid
        if self._conn is not None and self._conn.sock is not None:
            return self._conn, True
        route = self._route
        conn = Connection(
            route.host,
            route.port,
            self._context if route.scheme == "https" else None,
            proxy=route.proxy,
            proxy_headers=route.proxy_headers,
        )
        conn.open(deadline)
        self._conn = conn
        return conn, False

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = tls_context(self._options.ca_bundle)
        return self._ssl

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the connection (in this process only), without waiting for a request.

        If a request is in progress (shutdown's deadline passed while it hung), its socket
        is shut down, which ends the request at once instead of after its timeout.
        """
        if self._pid != os.getpid():
            self._conn = None
            return
        if self._lock.acquire(blocking=False):
            try:
                self._discard()
            finally:
                self._lock.release()
            return
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def token_source(options: Options, tls: Callable[[], ssl.SSLContext]) -> TokenSource:
    """The OAuth token source, reaching the auth server the way batches reach the host."""
    from ._oauth import TokenSource, connection_factory  # the oauth extra: only when used

    url = options.oauth_auth_server + "/token"
    route = _route(url, options.proxies)
    host_header = route.host if route.port in (80, 443) else f"{route.host}:{route.port}"
    if ":" in route.host:
        host_header = f"[{route.host}]:{route.port}"
    if url.startswith("http://") and not is_loopback(url):
        logger.warning("tracklane: OAuth token requests go to %s over plain http", url)
    connect = connection_factory(
        route.host,
        route.port,
        tls if route.scheme == "https" else None,
        route.proxy,
        route.proxy_headers,
    )
    return TokenSource(options, connect, route.target, host_header)


def tls_context(ca_bundle: object = None) -> ssl.SSLContext:
    """A verifying TLS context: a given CA bundle, else the system store plus certifi's."""
    if isinstance(ca_bundle, (str, os.PathLike)):
        path = os.fspath(ca_bundle)
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    context = ssl.create_default_context()
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi is optional
        return context
    context.load_verify_locations(cafile=certifi.where())
    return context


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    return parse_retry_after(value, dt.datetime.now(dt.timezone.utc))


def is_stale(exc: BaseException) -> bool:
    """An error that a kept-alive connection closed by the server while idle gives."""
    return isinstance(
        exc, (ConnectionClosed, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
    )


def _route(url: str, proxies: object) -> _Route:
    parts = urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    proxy_url = _proxy_for(scheme, host, proxies)
    if not proxy_url:
        return _Route(scheme, host, port, target)
    if "://" not in proxy_url:
        proxy_url = "http://" + proxy_url
    proxy = urlsplit(proxy_url)
    p_scheme = proxy.scheme or "http"
    if p_scheme != "http":
        raise ConfigurationError(
            f"proxies: only http:// proxies are supported (HTTPS goes through a CONNECT "
            f"tunnel inside them), not {p_scheme}://"
        )
    headers: Dict[str, str] = {}
    if proxy.username is not None:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        token = base64.b64encode(credentials.encode()).decode("ascii")
        headers["Proxy-Authorization"] = f"Basic {token}"
    if scheme == "http":  # plain HTTP through a proxy: absolute URI on the request line
        target = url
    return _Route(
        scheme, host, port, target, (proxy.hostname or "", proxy.port or 80), headers or None
    )


def _proxy_for(scheme: str, host: str, proxies: object) -> Optional[str]:
    """The proxy URL for ``scheme``: the ``proxies`` option, else the environment."""
    if isinstance(proxies, str):
        return proxies
    if isinstance(proxies, dict):
        for key in (scheme, f"{scheme}://", "all", "all://"):
            value = proxies.get(key)
            if value:
                return str(value)
        return None
    if is_loopback(f"{scheme}://{host}"):
        return None
    env = urllib.request.getproxies_environment()
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not env.get(scheme) or bypass(host):
        return None
    return env[scheme]
