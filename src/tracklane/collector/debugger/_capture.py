"""ASGI middleware recording what the ingest endpoints refuse into a RejectLog.

It watches the wire instead of hooking into the ingest code: it keeps references to
the request's body chunks (no copy) and the answer's status and body, and only when
the answer refuses something (4xx, or a 200 whose ``rejected`` list is not empty)
does it parse anything. So the accepted path pays a closure call per ASGI message,
and the ingest code stays unaware of the debugger. The wire contract it relies on is
the documented answer: ``{"error": "..."}`` on 400/401 and
``{"rejected": [{"index", "messageId", "reason"}]}`` for messages refused in a batch.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tracklane.collector._auth import basic_user
from tracklane.collector._body import GzipInflater
from tracklane.collector._ingest import MAX_REQUEST_BYTES, RequestError
from tracklane.collector._json import dumps, loads
from tracklane.collector._rejects import MAX_KEPT_PAYLOAD_BYTES, RejectLog, reject_kind

__all__ = ["RejectCapture"]

logger = logging.getLogger(__name__)

# Body bytes kept for the record; the app refuses bigger bodies itself.
_KEEP_BODY_BYTES = MAX_REQUEST_BYTES + 65_536
_NO_REJECTIONS = b'"rejected":[]'
_REFUSED = frozenset({400, 401, 413, 415})


class RejectCapture:
    """Wrap the collector app; record refusals on ``paths`` (POST) into ``log``."""

    def __init__(self, app: ASGIApp, log: RejectLog, paths: Iterable[str]) -> None:
        """Record what ``app`` refuses on the ingest ``paths``."""
        self.app = app
        self.log = log
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        chunks: List[bytes] = []
        answer: List[bytes] = []
        state = {"status": 0, "kept": 0}

        async def tee_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and state["kept"] < _KEEP_BODY_BYTES:
                body = message.get("body", b"")
                chunks.append(body)
                state["kept"] += len(body)
            return message

        async def watch_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))
            await send(message)

        await self.app(scope, tee_receive, watch_send)
        status = state["status"]
        if status == 200 and _NO_REJECTIONS in b"".join(answer):
            return
        if status != 200 and status not in _REFUSED:
            return  # 503 and friends: a failure of ours, retried by the client, not a refusal
        try:
            self._record(scope, status, b"".join(chunks), b"".join(answer))
        except Exception:  # the debugger must never break ingest
            logger.exception("could not record a refused request for the debugger")

    def _record(self, scope: Scope, status: int, body: bytes, answer: bytes) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            write_key = basic_user(headers.get("authorization"))
        except ValueError:
            write_key = None
        raw, unreadable = _inflate(body, headers.get("content-encoding"))
        payload = _parse(raw)
        if write_key is None and isinstance(payload, dict):
            body_key = payload.get("writeKey")
            write_key = body_key if isinstance(body_key, str) and body_key else None
        if isinstance(payload, dict):
            payload.pop("writeKey", None)  # never kept, nor served back
        reply = _parse(answer)
        reply = reply if isinstance(reply, dict) else {}
        client = scope.get("client")
        common: Dict[str, Any] = {
            "received_at": _now_iso(),
            "status": status,
            "path": scope["path"],
            "write_key": write_key,
            "remote": client[0] if client else None,
            "user_agent": headers.get("user-agent"),
        }
        if status == 200 or reply.get("rejected"):
            batch = payload.get("batch") if isinstance(payload, dict) else None
            for rejection in reply.get("rejected") or []:
                index = rejection.get("index")
                message = (
                    batch[index]
                    if isinstance(batch, list) and isinstance(index, int) and index < len(batch)
                    else None
                )
                if isinstance(message, dict):
                    message.pop("writeKey", None)
                kept, excerpt = _keep(message)
                reason = str(rejection.get("reason"))
                self.log.add(
                    kind=reject_kind(status, reason),
                    reason=reason,
                    index=index if isinstance(index, int) else None,
                    message_id=rejection.get("messageId"),
                    payload=kept,
                    excerpt=excerpt,
                    **common,
                )
            return
        reason = str(reply.get("error") or f"HTTP {status}")
        if payload is not None:
            kept, excerpt = _keep(payload)
        else:
            kept, excerpt = None, unreadable or _text_excerpt(raw)
        message_id = payload.get("messageId") if isinstance(payload, dict) else None
        self.log.add(
            kind=reject_kind(status, reason),
            reason=reason,
            message_id=message_id if isinstance(message_id, str) else None,
            payload=kept,
            excerpt=excerpt,
            **common,
        )


def _now_iso() -> str:
    """The time now as the store writes ``receivedAt`` (UTC, milliseconds, ``Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _inflate(body: bytes, encoding: Optional[str]) -> Tuple[bytes, Optional[str]]:
    """Return the body as sent (inflated when gzip), or a note when it cannot be."""
    if (encoding or "").strip().lower() not in ("gzip", "x-gzip"):
        return body, None
    inflater = GzipInflater(MAX_REQUEST_BYTES + MAX_KEPT_PAYLOAD_BYTES)
    try:
        inflater.feed(body)
        return inflater.finish(), None
    except RequestError as exc:
        return b"", f"(gzip body not shown: {exc})"


def _parse(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return loads(raw)
    except ValueError:
        return None


def _keep(value: Any) -> Tuple[Any, Optional[str]]:
    """Return ``(value, None)`` when small enough, else ``(None, its JSON's start)``."""
    if value is None:
        return None, None
    try:
        encoded = dumps(value)
    except ValueError:
        return None, repr(value)[:MAX_KEPT_PAYLOAD_BYTES]
    if len(encoded) <= MAX_KEPT_PAYLOAD_BYTES:
        return value, None
    return None, _text_excerpt(encoded)


def _text_excerpt(raw: bytes) -> Optional[str]:
    if not raw:
        return None
    text = raw[:MAX_KEPT_PAYLOAD_BYTES].decode("utf-8", errors="replace")
    more = len(raw) - MAX_KEPT_PAYLOAD_BYTES
    return text + (f"\u2026 ({more} more bytes)" if more > 0 else "")
