"""The messages the collector refused, kept for the debugger page (pure: no I/O).

Kept in memory, in a ring of the latest :data:`DEFAULT_CAPACITY` records, and lost on
restart. Why not a table beside the events: a refused message was never acknowledged
(its sender got the reason in the HTTP answer), so it is a diagnostic, not data; and a
flood of bad or unauthenticated requests must cost neither disk writes nor the ingest
path's fsync budget, nor grow the database. Each collector process keeps its own ring.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional

__all__ = [
    "DEFAULT_CAPACITY",
    "MAX_KEPT_PAYLOAD_BYTES",
    "RejectLog",
    "RejectedMessage",
    "reject_kind",
    "source_label",
]

DEFAULT_CAPACITY = 1_000
# A refused payload is kept whole up to this size; bigger ones (an oversize message is over
# 32 KB) keep their start as text. 1,000 records therefore hold at most about 8 MB.
MAX_KEPT_PAYLOAD_BYTES = 8_192
_LABEL_CHARS = 6


def source_label(write_key: Optional[str]) -> str:
    """Return how the debugger shows a write key: its first characters only.

    Enough to tell sources apart without printing the whole key in a page that may be
    shown in a screenshot. An empty or absent key shows as ``"(none)"``.
    """
    if not write_key:
        return "(none)"
    if len(write_key) <= _LABEL_CHARS:
        return write_key
    return write_key[:_LABEL_CHARS] + "\u2026"


def reject_kind(status: int, reason: str) -> str:
    """Classify a refusal for the page: ``write key``, ``oversize`` or ``invalid``."""
    if status == 401:
        return "write key"
    if "limit" in reason and (" over the " in reason or "too large" in reason):
        return "oversize"
    return "invalid"


@dataclass(frozen=True)
class RejectedMessage:
    """One refused message (or whole request), as the debugger shows it."""

    seq: int
    received_at: str
    status: int
    kind: str
    reason: str
    path: str
    write_key: Optional[str]
    index: Optional[int] = None  # position in the batch, for a message refused alone
    message_id: Optional[str] = None
    payload: Any = None  # the refused JSON (message or request), when small enough
    excerpt: Optional[str] = None  # the start of the body as text, when not kept as JSON
    remote: Optional[str] = None
    user_agent: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        """Return the debugger API's form (the write key shown as its label only)."""
        return {
            "seq": self.seq,
            "receivedAt": self.received_at,
            "status": self.status,
            "kind": self.kind,
            "reason": self.reason,
            "path": self.path,
            "source": source_label(self.write_key),
            "index": self.index,
            "messageId": self.message_id,
            "payload": self.payload,
            "excerpt": self.excerpt,
            "remote": self.remote,
            "userAgent": self.user_agent,
        }


class RejectLog:
    """A thread-safe ring of the latest refusals, each numbered by a growing ``seq``."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """Keep at most ``capacity`` records; older ones fall off."""
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._records: Deque[RejectedMessage] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._last_seq = 0
        self.total = 0  # every refusal recorded since start, including those fallen off
        # Tells readers that seq numbering restarted (a new process): their cursor is void.
        self.log_id = uuid.uuid4().hex[:12]

    def add(self, **fields: Any) -> RejectedMessage:
        """Record one refusal (the fields of RejectedMessage but ``seq``); return it."""
        with self._lock:
            self._last_seq += 1
            self.total += 1
            record = RejectedMessage(seq=self._last_seq, **fields)
            self._records.append(record)
        return record

    def page(
        self,
        *,
        after: Optional[int] = None,
        before: Optional[int] = None,
        limit: int = 100,
        visible: Optional[Callable[[RejectedMessage], bool]] = None,
    ) -> List[RejectedMessage]:
        """Return up to ``limit`` records: after ``after`` oldest first, else newest first."""
        with self._lock:
            records = list(self._records)
        if after is not None:
            chosen = (r for r in records if r.seq > after)
        else:
            chosen = (r for r in reversed(records) if before is None or r.seq < before)
        found: List[RejectedMessage] = []
        for record in chosen:
            if visible is None or visible(record):
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    @property
    def last_seq(self) -> int:
        """The seq of the latest record (0 when none yet)."""
        return self._last_seq
