"""The ``webhook`` destination: each message (or a batch) POSTed as JSON to a URL.

One attempt per request here; the router retries what failed, with backoff and
``Retry-After``. 408, 429, 5xx and network errors are retryable, any other 4xx permanent.
Once a request gets no answer at all (refused, reset, timed out), the rest of the claim is
not sent and is retried later, so a dead endpoint costs one timeout per claim, not one per
request. Requests of one claim go out in parallel on ``concurrency`` keep-alive connections
(stdlib ``http.client``: the collector already depends on nothing else for this, and a
webhook call is one small POST).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from tracklane.collector._json import dumps
from tracklane.collector.destinations.base import (
    Destination,
    Envelope,
    Failure,
    Outcome,
    Setting,
    headers,
    http_url,
    int_between,
    positive_seconds,
    text,
)

__all__ = ["WebhookDestination", "retry_after_seconds", "sign"]

_RETRYABLE = frozenset({408, 429})
_USER_AGENT = "tracklane-collector"


def sign(secret: str, body: bytes) -> str:
    """``X-Signature``: the hex HMAC-SHA256 of the body keyed by the secret."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Parse ``Retry-After`` (seconds or an HTTP date); ``None`` when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


class WebhookDestination(Destination):
    """POST messages as JSON: one object per request, or ``{"batch": [...]}`` batches."""

    type_name = "webhook"
    accepts_wire = True
    settings: ClassVar[Mapping[str, Setting]] = {
        "url": Setting(http_url, required=True, help="where to POST"),
        "secret": Setting(text, help="X-Signature = hex HMAC-SHA256 of the body"),
        "batch_size": Setting(int_between(1, 1000), default=1, help="messages per request"),
        "headers": Setting(headers, default=(), help="extra request headers"),
        "timeout": Setting(positive_seconds, default=10.0, help="seconds per request"),
        "concurrency": Setting(int_between(1, 64), default=4, help="parallel requests"),
    }

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        """Prepare connections to ``config["url"]`` (nothing is opened yet)."""
        super().__init__(name, config)
        parts = urlsplit(self.config["url"])
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout: float = self.config["timeout"]
        self._secret: Optional[str] = self.config["secret"]
        self._batch_size: int = self.config["batch_size"]
        self._extra: Tuple[Tuple[str, str], ...] = self.config["headers"]
        concurrency: int = self.config["concurrency"]
        # Two claims in flight: one is read and routed while the other is sent, and the
        # request threads never wait for a claim's slowest request before starting the next.
        self.claim_size = max(self._batch_size * concurrency * 2, 100)
        self.claims_in_flight = 2
        self._local = threading.local()
        self._connections: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"tracklane.hook.{name}")

    def deliver(self, envelopes: Sequence[Envelope]) -> Outcome:
        """POST every message (in ``batch_size`` groups, in parallel); report failures."""
        size = self._batch_size
        count = len(envelopes)
        groups = [range(start, min(start + size, count)) for start in range(0, count, size)]
        unreachable: List[Failure] = []  # set once a request gets no answer at all

        def post(group: range) -> Optional[Failure]:
            if unreachable:  # don't wait out a timeout per request of a dead endpoint
                return Failure(f"not sent: {unreachable[0].error}", retry_after=None)
            failure = self._post([envelopes[i] for i in group])
            if failure is not None and failure.no_answer:
                unreachable.append(failure)
            return failure

        results = self._pool.map(post, groups)
        outcome = Outcome()
        for group, failure in zip(groups, results):
            if failure is not None:
                outcome.failed.update(dict.fromkeys(group, failure))
        return outcome

    def _post(self, group: List[Envelope]) -> Optional[Failure]:
        """One request; ``None`` when the receiver answered 2xx."""
        # Messages no filter edited come encoded already (the outbox built their JSON).
        parts = [dumps(e.message) if e.wire is None else e.wire for e in group]
        if self._batch_size == 1:
            body = parts[0]
            id_header = ("X-Message-Id", str(group[0].message.get("messageId", "")))
        else:
            body = b'{"batch":[' + b",".join(parts) + b"]}"
            ids = "\n".join(str(e.message.get("messageId", "")) for e in group)
            id_header = ("X-Batch-Id", hashlib.sha256(ids.encode("utf-8")).hexdigest())
        request_headers = {
            "Content-Type": "application/json",
            "User-Agent": _USER_AGENT,
            id_header[0]: id_header[1],
            **dict(self._extra),
        }
        if self._secret is not None:
            request_headers["X-Signature"] = sign(self._secret, body)
        for attempt in (1, 2):  # a kept-alive connection the server closed gets one fresh try
            connection, fresh = self._connection()
            try:
                connection.request("POST", self._path, body, request_headers)
                response = connection.getresponse()
                answer = response.read(2048)
                retry_after = retry_after_seconds(response.getheader("Retry-After"))
                if response.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if attempt == 1 and not fresh and not isinstance(exc, socket.timeout):
                    continue
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                return Failure(reason, no_answer=True)
            status = response.status
            if 200 <= status < 300:
                return None
            reason = f"HTTP {status}: {answer.decode('utf-8', 'replace')[:200]}"
            permanent = 400 <= status < 500 and status not in _RETRYABLE
            return Failure(reason, permanent=permanent, retry_after=retry_after)
        return Failure("connection closed")  # not reached: the loop always returns

    def _connection(self) -> Tuple[http.client.HTTPConnection, bool]:
        connection: Optional[http.client.HTTPConnection] = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, False
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection, True

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def close(self) -> None:
        """Stop the request threads and close every connection."""
        self._pool.shutdown(wait=True)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
