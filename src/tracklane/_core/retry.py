"""What one answer means for a batch: delivered, retry after N seconds, split, or drop.

Pure: the time, the random source and the deadline are arguments. Retries follow
capped exponential backoff with full jitter, or the server's ``Retry-After`` (seconds or
an HTTP date, capped by ``max_retry_after``), within a total budget (``max_total``) and
the caller's deadline (a flush or shutdown that must end).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import random
from dataclasses import dataclass
from typing import Callable, Optional

from tracklane._stats import DropReason

__all__ = [
    "Decision",
    "Plan",
    "RetryPolicy",
    "is_retryable_status",
    "is_split_status",
    "parse_retry_after",
]

# 501 Not Implemented and 505 HTTP Version Not Supported will not change on a retry.
_NOT_RETRYABLE_5XX = frozenset({501, 505})


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx (but 501 and 505) are worth another attempt; other codes are final."""
    if status in (408, 429):
        return True
    return 500 <= status < 600 and status not in _NOT_RETRYABLE_5XX


def is_split_status(status: int) -> bool:
    """A 400 or 413 on several messages may be one bad message: split the batch and retry."""
    return status in (400, 413)


def parse_retry_after(value: Optional[str], now: dt.datetime) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None.

    ``now`` (aware, UTC) is the wall-clock time the answer arrived, for the date form.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class Decision(enum.Enum):
    """What to do with a batch after one answer."""

    DELIVERED = "delivered"
    RETRY = "retry"
    SPLIT = "split"
    DROP = "drop"


@dataclass(frozen=True)
class Plan:
    """A decision, the wait before a retry, and the reason of a drop."""

    decision: Decision
    wait: float = 0.0
    reason: Optional[DropReason] = None
    by_deadline: bool = False
    """A drop because the caller's deadline comes first, not the policy's limits."""


DELIVERED = Plan(Decision.DELIVERED)
SPLIT = Plan(Decision.SPLIT)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped per sleep and in total."""

    max_retries: int = 10
    base: float = 0.5
    cap: float = 10.0
    max_total: float = 300.0
    max_retry_after: float = 60.0

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The sleep before retry ``retry`` (from 1): uniform in [0, min(cap, base*2^(retry-1))]."""
        ceiling = min(self.cap, self.base * (2.0 ** min(retry - 1, 30)))
        return ceiling * rand()

    def delay(
        self, retry: int, retry_after: Optional[float], rand: Callable[[], float] = random.random
    ) -> float:
        """The sleep before a retry: the server's ``Retry-After`` (capped), else backoff."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(retry, rand)

    def plan(
        self,
        status: Optional[int],
        retry_after: Optional[float],
        *,
        retry: int,
        size: int,
        spent: float,
        now: float,
        deadline: Optional[float],
        deadline_reason: DropReason,
        rand: Callable[[], float],
    ) -> Plan:
        """Decide after one answer (``status`` None: no answer at all).

        ``retry`` is the number of the retry this answer would lead to (1 after the first
        attempt); ``spent`` the seconds since the first attempt; ``now`` and ``deadline``
        are on the same monotonic clock; ``size`` is the number of messages in the batch.
        """
        if status is not None and 200 <= status < 300:
            return DELIVERED
        if status is not None and not is_retryable_status(status):
            if is_split_status(status) and size > 1:
                return SPLIT
            return Plan(Decision.DROP, reason=DropReason.REJECTED)
        wait = self.delay(retry, retry_after, rand)
        if retry > self.max_retries or spent + wait > self.max_total:
            return Plan(Decision.DROP, wait, DropReason.RETRIES_EXHAUSTED)
        if deadline is not None and now + wait >= deadline:
            return Plan(Decision.DROP, wait, deadline_reason, by_deadline=True)
        return Plan(Decision.RETRY, wait)
