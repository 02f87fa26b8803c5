"""Posting one request body; the only module that imports httpx.

httpx is imported when the first HTTP transport is built, not by ``import tracklane``:
importing httpx also imports its command-line tools (click, rich) where they are installed.
"""

from __future__ import annotations

import base64
import gzip as gzip_module
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Union

if TYPE_CHECKING:
    import httpx

from ._retry import parse_retry_after
from ._version import __version__
from .config import Options, is_loopback

__all__ = ["HTTPTransport", "SendResult"]

logger = logging.getLogger("tracklane")
_warned_plain_http: set[str] = set()


@dataclass(frozen=True)
class SendResult:
    """What one POST gave: a status (with body and Retry-After) or an error without a response."""

    status: Optional[int] = None
    body: str = ""
    retry_after: Optional[float] = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return self.status is not None and 200 <= self.status < 300


class HTTPTransport:
    """Keeps one connection pool per process and posts batches with Basic auth."""

    def __init__(self, options: Options) -> None:
        import httpx  # noqa: F401  (imported here, at construction, rather than on first send)

        self._options = options
        self._lock = threading.Lock()
        self._client: Optional[httpx.Client] = None
        self._pid = os.getpid()
        token = base64.b64encode(f"{options.write_key}:".encode()).decode("ascii")
        self._headers: Dict[str, str] = {
            "Content-Type": "application/json",
            "User-Agent": f"tracklane/{__version__}",
            "Authorization": f"Basic {token}",
        }
        if options.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._url = options.batch_url
        plain = self._url.startswith("http://") and not is_loopback(self._url)
        if plain and options.host not in _warned_plain_http:
            _warned_plain_http.add(options.host)
            logger.warning("tracklane: sending to %s over plain http (not TLS)", options.host)

    def send(self, body: bytes, timeout: float) -> SendResult:
        """POST ``body`` to ``/v1/batch``; never raises for network trouble."""
        import httpx

        client = self._get_client()
        content = gzip_module.compress(body, 6) if self._options.gzip else body
        try:
            response = client.post(
                self._url, content=content, headers=self._headers, timeout=max(timeout, 0.001)
            )
        except httpx.HTTPError as exc:
            return SendResult(error=exc)
        except OSError as exc:  # pragma: no cover - httpx maps socket errors; kept as a guard
            return SendResult(error=exc)
        text = response.text if response.status_code >= 300 else ""
        return SendResult(
            status=response.status_code,
            body=text,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def _get_client(self) -> httpx.Client:
        pid = os.getpid()
        client = self._client
        if client is not None and self._pid == pid:
            return client
        with self._lock:
            if self._client is None or self._pid != pid:
                # A client inherited over fork shares sockets with the parent: never reuse it.
                self._client = self._new_client()
                self._pid = pid
            return self._client

    def _new_client(self) -> httpx.Client:
        import httpx

        options = self._options
        # Certificates are always verified; a CA bundle may replace the default store.
        bundle = options.ca_bundle
        verify: Union[str, bool] = os.fspath(bundle) if isinstance(bundle, str) else True
        mounts: Optional[Dict[str, httpx.HTTPTransport]] = None
        proxy: Optional[str] = None
        if isinstance(options.proxies, str):
            proxy = options.proxies
        elif options.proxies:
            mounts = {
                f"{scheme.rstrip(':/')}://": httpx.HTTPTransport(proxy=url, verify=verify)
                for scheme, url in options.proxies.items()
            }
        return httpx.Client(
            verify=verify,
            proxy=proxy,
            mounts=mounts,
            trust_env=True,
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )

    def close(self) -> None:
        """Close the connection pool (in this process only)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()
