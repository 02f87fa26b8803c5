"""Which failures are retried, and how long to wait before the next attempt (pure)."""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["RetryPolicy", "is_retryable_status", "parse_retry_after"]

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


def parse_retry_after(value: Optional[str], now: Optional[dt.datetime] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
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
        current = now or dt.datetime.now(dt.timezone.utc)
        seconds = (when - current).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


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

    def delay(self, retry: int, retry_after: Optional[float]) -> float:
        """The sleep before a retry: the server's ``Retry-After`` (capped), else backoff."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(retry)
