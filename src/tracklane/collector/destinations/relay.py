"""The ``relay`` destination: forward to another Segment-compatible API.

Delivery is tracklane's own client (``tracklane.Client``, public API only): one client
per relay destination with the destination's write key and URL, so batching, gzip,
retries with backoff and ``Retry-After`` are the library's. Each stored message is
forwarded as it was received (``Client.forward``): its ``messageId`` (so the upstream
deduplicates a redelivery), ``context`` with the sender's ``library``, ``integrations``,
every other field, and the ``timestamp`` its sender gave (``originalTimestamp``; the
collector's own time when the sender gave none). What the collector added is left out
(``receivedAt``, its corrected ``timestamp``, the original request's ``sentAt``); the
relay's client sets ``sentAt`` when it sends, as any sender does.

A claim is enqueued and flushed; what the client reports to ``on_error`` is a failure
(permanent when the upstream rejected it with a 4xx other than 408/429), and what is still
pending when the flush deadline passes is reported as a retryable failure (it may still
arrive: delivery is at least once).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Dict, List, Mapping, Sequence

from tracklane.collector.destinations.base import (
    Destination,
    Envelope,
    Failure,
    Outcome,
    Setting,
    http_url,
    int_between,
    positive_seconds,
    text,
)

__all__ = ["RelayDestination"]

# Set by the collector when it stored the message (``timestamp`` is corrected there and
# replaced by the sender's own below); ``sentAt`` is the relay client's to set.
_COLLECTOR_FIELDS = frozenset({"receivedAt", "originalTimestamp", "sentAt", "seq"})


class RelayDestination(Destination):
    """Forward messages upstream with a ``tracklane.Client``."""

    type_name = "relay"
    settings: ClassVar[Mapping[str, Setting]] = {
        "url": Setting(
            http_url, required=True, help="the upstream API, e.g. https://api.segment.io"
        ),
        "write_key": Setting(text, required=True, help="the upstream source's write key"),
        "batch_size": Setting(int_between(1, 2500), default=100, help="messages per request"),
        "timeout": Setting(positive_seconds, default=15.0, help="seconds per request"),
        "flush_timeout": Setting(
            positive_seconds, default=60.0, help="seconds a claim may take to go out"
        ),
        "gzip": Setting(lambda value: _boolean(value), default=False, help="compress requests"),
        "max_retries": Setting(int_between(0, 100), default=5, help="the client's retries"),
    }

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        """Build the client that delivers for this destination."""
        super().__init__(name, config)
        from tracklane import Client  # the public API only; imported when a relay is configured

        self.claim_size = max(self.config["batch_size"] * 4, 100)
        self._lock = threading.Lock()
        self._failed: Dict[str, Failure] = {}
        self._client = Client(
            self.config["write_key"],
            host=self.config["url"],
            on_error=self._on_error,
            batch_size=self.config["batch_size"],
            timeout=self.config["timeout"],
            gzip=self.config["gzip"],
            max_retries=self.config["max_retries"],
            max_queue_size=max(self.claim_size * 2, 10_000),
            overflow="block",
            block_timeout=self.config["flush_timeout"],
            flush_interval=0.05,
        )

    def _on_error(self, exc: BaseException, batch: List[Dict[str, Any]]) -> None:
        status = getattr(exc, "status_code", None)
        permanent = isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)
        failure = Failure(f"{type(exc).__name__}: {exc}", permanent=permanent)
        with self._lock:
            for message in batch:
                message_id = message.get("messageId") if isinstance(message, dict) else None
                if isinstance(message_id, str):
                    self._failed[message_id] = failure

    def deliver(self, envelopes: Sequence[Envelope]) -> Outcome:
        """Enqueue every message, flush, and report what the client could not deliver."""
        outcome = Outcome()
        with self._lock:
            self._failed.clear()
        for index, envelope in enumerate(envelopes):
            try:
                queued, _ = self._send(envelope.message)
            except ValueError as exc:  # a stored message the client's rules refuse
                outcome.failed[index] = Failure(f"not relayable: {exc}", permanent=True)
                continue
            if not queued:
                outcome.failed[index] = Failure("the relay client did not accept the message")
        result = self._client.flush(self.config["flush_timeout"])
        with self._lock:
            failed = dict(self._failed)
        for index, envelope in enumerate(envelopes):
            if index in outcome.failed:
                continue
            failure = failed.get(str(envelope.message.get("messageId")))
            if failure is not None:
                outcome.failed[index] = failure
            elif not result.complete:
                outcome.failed[index] = Failure(
                    f"still pending after {self.config['flush_timeout']} s"
                )
        return outcome

    def _send(self, message: Mapping[str, Any]) -> Any:
        """Forward one stored message as its sender sent it."""
        received = {key: value for key, value in message.items() if key not in _COLLECTOR_FIELDS}
        received["timestamp"] = message.get("originalTimestamp") or message.get("timestamp")
        return self._client.forward(received)

    def close(self) -> None:
        """Flush what is left and stop the client."""
        self._client.shutdown(self.config["timeout"])


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value
