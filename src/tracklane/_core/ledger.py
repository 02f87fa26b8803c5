"""The counters of one client, kept so that every snapshot adds up.

Every message a call accepted or refused is *tracked*; from then on it is *pending*
(queued, in flight, or being delivered inline) until it is *delivered* or *dropped* for
a reason. ``tracked == delivered + pending + sum(dropped.values())`` holds between any
two method calls. The ledger is plain data: the owner serialises access (the pipeline's
lock, or the event loop).

``accepted`` and ``resolved`` count the messages that entered the queue and those that
left it for good (delivered or dropped); a flush waits until ``resolved`` reaches the
``accepted`` it saw.
"""

from __future__ import annotations

from typing import Dict

from tracklane._stats import DropReason, Stats

__all__ = ["Ledger"]


class Ledger:
    """Counters of tracked, delivered, pending and dropped messages."""

    __slots__ = (
        "accepted",
        "batches",
        "delivered",
        "dropped",
        "inflight",
        "inline",
        "recovered",
        "resolved",
        "retries",
        "tracked",
    )

    def __init__(self, recovered: int = 0) -> None:
        # Messages recovered from a durable queue count as tracked and queued.
        self.tracked = recovered
        self.accepted = recovered
        self.recovered = recovered
        self.delivered = 0
        self.batches = 0  # requests the endpoint acknowledged
        self.retries = 0
        self.resolved = 0
        self.inflight = 0  # in the batch being sent
        self.inline = 0  # being delivered inline (sync_mode, deliver-now)
        self.dropped: Dict[str, int] = {}

    def accept(self) -> None:
        """A call's message entered the queue."""
        self.tracked += 1
        self.accepted += 1

    def refuse(self, reason: DropReason) -> None:
        """A call's message was refused before queueing (too large, full queue, shut down)."""
        self.tracked += 1
        self.drop(reason, 1)

    def stubbed(self) -> None:
        """A stub client accepted a message and sent it nowhere: tracked and delivered."""
        self.tracked += 1
        self.delivered += 1

    def drop(self, reason: DropReason, count: int) -> None:
        """``count`` messages already tracked are given up for ``reason``."""
        key = reason.value
        self.dropped[key] = self.dropped.get(key, 0) + count

    def undrop(self, reason: DropReason, count: int) -> None:
        """Take back ``count`` drops (a batch written off at shutdown was delivered after all)."""
        key = reason.value
        left = self.dropped.get(key, 0) - count
        if left > 0:
            self.dropped[key] = left
        else:
            self.dropped.pop(key, None)

    def retried(self) -> None:
        """One more attempt at a request that failed (the retry, not its outcome)."""
        self.retries += 1

    def begin_inline(self) -> None:
        """A message is tracked and delivered inline, outside the queue."""
        self.tracked += 1
        self.inline += 1

    def end_inline(self) -> None:
        """The inline delivery begun by :meth:`begin_inline` is settled."""
        self.inline -= 1

    def snapshot(self, queued: int) -> Stats:
        """The counters, with ``queued`` messages waiting in the queue."""
        return Stats(
            tracked=self.tracked,
            delivered=self.delivered,
            retries=self.retries,
            pending=queued + self.inflight + self.inline,
            dropped=dict(self.dropped),
            recovered=self.recovered,
            batches=self.batches,
        )
