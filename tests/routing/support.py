"""A webhook receiver on 127.0.0.1 that records every messageId it accepted, and helpers."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import httpx

from helpers import wait_until  # noqa: F401 (the routing tests import it from here)
from tracklane.collector.config import RoutingConfig, parse_config


@dataclass
class Receipt:
    """One request the receiver answered 2xx."""

    at: float  # time.monotonic() when it was accepted
    message_ids: List[str]
    messages: List[Dict[str, Any]]
    headers: Dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """Accepts POSTed messages; can fail a share of requests and hang on some.

    ``fail_ratio`` of requests get a 500; ``hang_ratio`` are held ``hang_seconds`` and
    then answered 503 (the sender has given up by then, so they never count as accepted).
    """

    fail_ratio: float = 0.0
    hang_ratio: float = 0.0
    hang_seconds: float = 0.0
    status: int = 200  # the answer when neither failing nor hanging
    seed: int = 7
    receipts: List[Receipt] = field(default_factory=list)
    failures: int = 0
    # Answers for the next requests, in order: (status, headers); then the rules above.
    script: List[Tuple[int, Dict[str, str]]] = field(default_factory=list)
    attempts: List[float] = field(default_factory=list)  # monotonic time of every request
    # Called with each request's (lower-cased) headers and body before it is answered; may
    # block, and may return a status to answer instead of the rules above.
    gate: Optional[Callable[[Dict[str, str], bytes], Optional[int]]] = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        headers: Dict[str, str] = {}
        with self._cond:
            roll = self._rng.random()
            self.attempts.append(time.monotonic())
            scripted = self.script.pop(0) if self.script else None
        status = self.status
        gated = None
        if self.gate is not None:
            gated = self.gate({k.lower(): v for k, v in handler.headers.items()}, body)
        if gated is not None:
            status = gated
        elif scripted is not None:
            status, headers = scripted
        elif roll < self.hang_ratio:
            time.sleep(self.hang_seconds)
            status = 503
        elif roll < self.hang_ratio + self.fail_ratio:
            status = 500
        if 200 <= status < 300:
            parsed = json.loads(body)
            messages = parsed.get("batch", [parsed])
            receipt = Receipt(
                time.monotonic(),
                [m["messageId"] for m in messages],
                messages,
                {k.lower(): v for k, v in handler.headers.items()},
                body,
            )
            with self._cond:
                self.receipts.append(receipt)
                self._cond.notify_all()
        else:
            with self._cond:
                self.failures += 1
        answer = b'{"ok":true}' if status < 300 else b'{"error":"scripted"}'
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(answer)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(answer)
        except OSError:
            handler.close_connection = True

    def message_ids(self) -> List[str]:
        """Every accepted messageId, in order, with repeats."""
        with self._cond:
            return [m for receipt in self.receipts for m in receipt.message_ids]

    def wait_for_unique(self, count: int, timeout: float) -> int:
        """Wait until ``count`` distinct messageIds were accepted; return how many were."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                unique = len({m for r in self.receipts for m in r.message_ids})
                remaining = deadline - time.monotonic()
                if unique >= count or remaining <= 0:
                    return unique
                self._cond.wait(min(remaining, 0.5))

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


def write_config(path: Path, text: str) -> Path:
    """Write a TOML config file and return its path."""
    path.write_text(text)
    return path


def config_of(table: Dict[str, Any]) -> RoutingConfig:
    """A checked config from a table (as the TOML file would give)."""
    return parse_config(table, "test.toml")


def track(user: str = "u-1", event: str = "Order Completed", **fields: Any) -> Dict[str, Any]:
    """A track message with a fresh messageId."""
    import uuid

    return {
        "type": "track",
        "messageId": str(uuid.uuid4()),
        "userId": user,
        "event": event,
        "properties": {"total": 3},
        **fields,
    }


def post_batch(url: str, key: str, messages: Sequence[Dict[str, Any]]) -> httpx.Response:
    """POST a batch to a collector and check it was stored."""
    response = httpx.post(f"{url}/v1/batch", json={"batch": list(messages)}, auth=(key, ""))
    assert response.status_code == 200, response.text
    return response


def destinations_status(url: str, key: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """``GET /v1/destinations`` by destination name."""
    auth = (key, "") if key else None
    response = httpx.get(f"{url}/v1/destinations", auth=auth)
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()["destinations"]}


def signature(secret: str, body: bytes) -> str:
    """The expected X-Signature."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
