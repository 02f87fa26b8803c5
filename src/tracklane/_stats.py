"""Delivery counters: every message accepted by a call ends up delivered, pending or dropped."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict

__all__ = ["DropReason", "FlushResult", "Stats"]


class DropReason(str, enum.Enum):
    """Why a message was not delivered."""

    QUEUE_FULL = "queue_full"
    TOO_LARGE = "too_large"
    REJECTED = "rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"
    SHUTDOWN = "shutdown"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Stats:
    """A consistent snapshot of a client's counters.

    ``tracked == delivered + pending + sum(dropped.values())`` holds in every snapshot.
    """

    tracked: int
    delivered: int
    retries: int
    pending: int
    dropped: Dict[str, int] = field(default_factory=dict)
    recovered: int = 0
    """Messages found in the durable queue at start (left by a process that died); they
    are included in ``tracked``."""
    batches: int = 0
    """Requests the endpoint acknowledged (a batch split after a 400 counts each part)."""

    @property
    def dropped_total(self) -> int:
        """All dropped messages, whatever the reason."""
        return sum(self.dropped.values())


@dataclass(frozen=True)
class FlushResult:
    """What ``flush()`` or ``shutdown()`` achieved before returning.

    ``complete`` is true when every message queued before the call was delivered or given
    up on; otherwise ``pending`` of them were still queued or in flight when the timeout
    passed. The object is truthy exactly when ``complete`` is.
    """

    complete: bool
    pending: int
    stats: Stats

    def __bool__(self) -> bool:
        return self.complete
