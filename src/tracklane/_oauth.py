"""OAuth 2 client credentials, for Segment sources that require it (segment-analytics-python 2.3).

The client proves who it is with a JWT client assertion signed with its private key (RS256,
the key's id in the ``kid`` header; claims ``iss`` = ``sub`` = the client id, ``aud`` = the
auth server, ``iat``/``exp`` a minute apart, a fresh ``jti``), exchanges it at
``<oauth_auth_server>/token`` for an access token, and batches carry
``Authorization: Bearer <token>`` instead of Basic auth.

The token is cached and fetched again before it expires (when less than half of its
lifetime, at most a minute, is left); if that early fetch fails, the old token is used
while it is still valid. After a 401 from the tracking API the token is dropped and a new
one fetched (the transport then sends the batch once more). A 429 from the token endpoint is
honoured: no token request goes out before its ``Retry-After`` (or ``X-RateLimit-Reset``)
has passed. The server's ``Date`` header corrects our clock for the assertion's times.

Every failure to get a token is an :class:`~tracklane.OAuthError`, which the transport
reports as a failed attempt: retried under the retry policy, counted, and given to
``on_error`` when the batch is finally dropped; never raised into the caller. Tokens, the
assertion and the private key are never logged. PyJWT and cryptography come with the
``oauth`` extra and are imported only here, only when OAuth is configured.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import os
import ssl
import threading
import time
import uuid
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import urlencode

from ._core.retry import parse_retry_after
from ._http import Connection, Response
from ._version import __version__
from .config import Options
from .exceptions import ConfigurationError, OAuthError

__all__ = ["TokenSource"]

logger = logging.getLogger("tracklane")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ASSERTION_LIFETIME = 60  # seconds between iat and exp (segment: iat = now - 5, exp = now + 55)
_DEFAULT_LIFETIME = 120.0  # an answer without expires_in: refetch after a minute
_DEFAULT_RATE_LIMIT_WAIT = 5.0  # a 429 that does not say how long to wait (segment's choice)
_REFUSED = frozenset({400, 401, 403})


class TokenSource:
    """Fetches, caches and refreshes the access token of one client (thread-safe)."""

    def __init__(
        self,
        options: Options,
        connection: Callable[[], Connection],
        target: str,
        host_header: str,
    ) -> None:
        import jwt  # the oauth extra; Options checked it is installed
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key, client_id, key_id = (
            options.oauth_client_key,
            options.oauth_client_id,
            options.oauth_key_id,
        )
        if key is None or client_id is None or key_id is None:  # pragma: no cover - Options
            raise ConfigurationError("oauth_client_id: OAuth credentials are incomplete")
        data = key.encode() if isinstance(key, str) else key
        loaded = serialization.load_pem_private_key(data, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):  # pragma: no cover - Options checked it
            raise ConfigurationError("oauth_client_key: must be an RSA private key (RS256)")
        self._key = loaded
        self._jwt = jwt
        self._client_id = client_id
        self._key_id = key_id
        self._audience = options.oauth_auth_server
        self._scope = options.oauth_scope
        self._url = options.oauth_auth_server + "/token"
        self._connection = connection
        self._head = "\r\n".join(
            [
                f"POST {target} HTTP/1.1",
                f"Host: {host_header}",
                "Content-Type: application/x-www-form-urlencoded",
                "Accept: application/json",
                f"User-Agent: tracklane/{__version__}",
                "Connection: close",
                "Content-Length: ",
            ]
        ).encode("latin-1")
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._token: Optional[str] = None
        self._refresh_at = 0.0  # monotonic
        self._expires_at = 0.0  # monotonic
        self._not_before = 0.0  # monotonic: the token endpoint asked us to wait until then
        self._skew = 0.0  # seconds our clock is ahead of the auth server's
        self._warned_refused = False

    def token(self, deadline: float) -> str:
        """A valid access token, fetched if needed; raises :class:`OAuthError`."""
        if self._pid != os.getpid():  # forked: the parent's lock may be held by its thread
            self._lock = threading.Lock()
            self._pid = os.getpid()
        with self._lock:
            now = time.monotonic()
            cached = self._token
            if cached is not None and now < self._refresh_at:
                return cached
            try:
                return self._fetch(deadline)
            except OAuthError as exc:
                now = time.monotonic()
                if cached is None or now >= self._expires_at:
                    raise
                # The early refresh failed but the token is still good: use it, and try
                # again later rather than before every batch (a hanging token server would
                # otherwise cost each batch a timeout).
                left = self._expires_at - now
                self._refresh_at = min(self._expires_at, now + max(1.0, left / 4))
                logger.debug("tracklane: OAuth token refresh failed (%s); old one still valid", exc)
                return cached

    def fresh(self) -> Optional[str]:
        """The cached token if no fetch is due, without waiting (for the event loop)."""
        if self._pid != os.getpid() or not self._lock.acquire(blocking=False):
            return None  # a fetch is in progress (or forked): ask :meth:`token` off the loop
        try:
            cached = self._token
            return cached if cached is not None and time.monotonic() < self._refresh_at else None
        finally:
            self._lock.release()

    def reject(self, token: str) -> None:
        """The tracking API answered 401 to ``token``: fetch a new one next time."""
        with self._lock:
            if self._token == token:
                self._token = None

    # -- the token request ------------------------------------------------------------

    def _fetch(self, deadline: float) -> str:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            raise OAuthError(
                f"the OAuth server asked us to wait {wait:.1f}s more", 429, "", retry_after=wait
            )
        try:
            assertion = self._assertion()
        except Exception as exc:  # pragma: no cover - the key was checked when built
            raise OAuthError(f"could not sign the client assertion: {type(exc).__name__}") from exc
        body = urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
                "scope": self._scope,
            }
        ).encode("ascii")
        request = b"".join((self._head, str(len(body)).encode("ascii"), b"\r\n\r\n", body))
        started = time.monotonic()
        conn = self._connection()
        try:
            conn.open(deadline)
            response = conn.exchange(request, deadline)
        except OSError as exc:
            error = OAuthError(
                f"no answer from the OAuth server {self._url}: {type(exc).__name__}: {exc}"
            )
            raise error from exc
        finally:
            conn.close()
        self._learn_skew(response.headers.get("date"))
        if response.status == 200:
            return self._accept(response, started)
        raise self._refusal(response)

    def _assertion(self) -> str:
        now = int(time.time() - self._skew)
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._audience,
            "iat": now - 5,
            "exp": now - 5 + _ASSERTION_LIFETIME,
            "jti": str(uuid.uuid4()),
        }
        text: str = self._jwt.encode(
            claims, self._key, algorithm="RS256", headers={"kid": self._key_id}
        )
        return text

    def _accept(self, response: Response, started: float) -> str:
        try:
            data = json.loads(response.body)
            token = data["access_token"]
        except (ValueError, KeyError, TypeError):
            raise OAuthError(
                "the OAuth server's answer has no access_token", 200, _summary(response.body)
            ) from None
        if not isinstance(token, str) or not token or not _header_safe(token):
            raise OAuthError("the OAuth server's access_token is not usable text", 200, "")
        lifetime = _DEFAULT_LIFETIME
        expires_in = data.get("expires_in")
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
            lifetime = max(float(expires_in), 1.0)
        self._token = token
        self._expires_at = started + lifetime
        self._refresh_at = self._expires_at - min(60.0, lifetime / 2)
        logger.debug("tracklane: OAuth access token obtained, valid for %.0fs", lifetime)
        return token

    def _refusal(self, response: Response) -> OAuthError:
        status = response.status
        headers = response.headers
        retry_after = parse_retry_after(
            headers.get("retry-after"), dt.datetime.now(dt.timezone.utc)
        )
        if status == 429:
            if retry_after is None:
                retry_after = _reset_seconds(headers.get("x-ratelimit-reset"))
            if retry_after is None:
                retry_after = _DEFAULT_RATE_LIMIT_WAIT
            self._not_before = time.monotonic() + retry_after
        summary = _summary(response.body)
        if status in _REFUSED and not self._warned_refused:
            self._warned_refused = True
            logger.warning(
                "tracklane: the OAuth server %s refused the token request (HTTP %d %s); "
                "check oauth_client_id, oauth_client_key, oauth_key_id and oauth_scope",
                self._url,
                status,
                summary,
            )
        return OAuthError(
            f"the OAuth server answered HTTP {status}: {summary}", status, summary, retry_after
        )

    def _learn_skew(self, date: Optional[str]) -> None:
        if not date:
            return
        try:
            server = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=dt.timezone.utc)
        skew = time.time() - server.timestamp()
        # The Date header has whole seconds: only a skew beyond that rounding means anything.
        self._skew = skew if abs(skew) > 2 else 0.0


def connection_factory(
    host: str,
    port: int,
    tls: Optional[Callable[[], ssl.SSLContext]],
    proxy: Optional[Tuple[str, int]],
    proxy_headers: Optional[Dict[str, str]],
) -> Callable[[], Connection]:
    """A function making a new connection to the token endpoint (one per token request)."""

    def connect() -> Connection:
        return Connection(host, port, tls, proxy=proxy, proxy_headers=proxy_headers)

    return connect


def _summary(body: bytes) -> str:
    """``error: error_description`` of an OAuth error answer, else the start of the body."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        description = data.get("error_description")
        return f"{data['error']}: {description}" if description else str(data["error"])
    return body[:200].decode("utf-8", "replace")


def _reset_seconds(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds > 1e9:  # an epoch time rather than a number of seconds
        seconds -= time.time()
    return max(0.0, seconds) if seconds == seconds else None


def _header_safe(token: str) -> bool:
    return token.isascii() and token.isprintable() and " " not in token
