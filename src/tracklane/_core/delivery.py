"""One batch walked through the retry decisions, as a state machine without I/O.

A driver (the worker thread, the asyncio task, ``sync_mode``) runs it::

    job = BatchJob(messages, policy, request_timeout, sent_at, deadline, reason, rand)
    action = job.start(clock())
    while not isinstance(action, Done):
        if isinstance(action, Send):
            action = job.answered(transport.send(action.body, action.timeout), clock())
        else:  # Wait
            action = job.waited(clock(), aborted=interruptible_sleep(action.seconds))
    outcome = action.outcome

A batch that draws a 400 or 413 is split in halves, each sent on its own, so one bad
message cannot sink the others. Messages still undelivered when ``deadline`` passes
are dropped for ``deadline_reason``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

from tracklane._stats import DropReason
from tracklane.exceptions import (
    APIError,
    DeliveryError,
    RetriesExhaustedError,
    ShutdownError,
    TransportError,
)
from tracklane.transports import SendResult

from .batching import batch_body
from .retry import Decision, RetryPolicy

__all__ = ["BatchJob", "Done", "Drop", "Outcome", "Send", "Wait"]

logger = logging.getLogger("tracklane")


@dataclass
class Drop:
    """Messages given up on, why, and the error that says so."""

    reason: DropReason
    error: DeliveryError
    messages: List[bytes]


@dataclass
class Outcome:
    """The end of one batch: how many were delivered and what was dropped."""

    delivered: int = 0
    drops: List[Drop] = field(default_factory=list)
    requests: int = 0
    """Requests the endpoint acknowledged (more than one when the batch was split)."""


@dataclass(frozen=True)
class Send:
    """Post ``body`` (the messages of the current part) within ``timeout`` seconds."""

    body: bytes
    timeout: float
    count: int


@dataclass(frozen=True)
class Wait:
    """Sleep ``seconds`` before the next attempt; a driver may cut it short (shutdown)."""

    seconds: float


@dataclass(frozen=True)
class Done:
    """Nothing more to send for this batch."""

    outcome: Outcome


Action = Union[Send, Wait, Done]


class BatchJob:
    """The decisions for delivering one batch: attempts, waits, splits and drops."""

    def __init__(
        self,
        messages: List[bytes],
        policy: RetryPolicy,
        request_timeout: float,
        sent_at: Callable[[], str],
        deadline: Optional[float] = None,
        deadline_reason: DropReason = DropReason.SHUTDOWN,
        rand: Optional[Callable[[], float]] = None,
    ) -> None:
        self._parts: List[List[bytes]] = [messages]
        self._policy = policy
        self._request_timeout = request_timeout
        self._sent_at = sent_at
        self._deadline = deadline
        self._deadline_reason = deadline_reason
        self._rand = rand if rand is not None else random.random
        self.outcome = Outcome()
        self._part: List[bytes] = []
        self._body = b""
        self._started = 0.0
        self._retry = 0
        self._last: Optional[DeliveryError] = None

    def start(self, now: float) -> Action:
        """The first action: send the batch (or Done at once if the deadline has passed)."""
        return self._next_part(now)

    def _next_part(self, now: float) -> Action:
        if not self._parts:
            return Done(self.outcome)
        self._part = self._parts.pop(0)
        # One body per part: a retry resends the same bytes (same sentAt).
        self._body = batch_body(self._part, self._sent_at())
        self._started = now
        self._retry = 0
        self._last = None
        return self._attempt(now)

    def _attempt(self, now: float) -> Action:
        timeout = self._request_timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - now)
            if timeout <= 0:
                self.outcome.drops.append(self._deadline_drop())
                return self._next_part(now)
        return Send(self._body, timeout, len(self._part))

    def answered(self, result: SendResult, now: float) -> Action:
        """The answer to the last :class:`Send`; returns the next action."""
        part = self._part
        plan = self._policy.plan(
            result.status,
            result.retry_after,
            retry=self._retry + 1,
            size=len(part),
            spent=now - self._started,
            now=now,
            deadline=self._deadline,
            deadline_reason=self._deadline_reason,
            rand=self._rand,
        )
        decision = plan.decision
        if decision is Decision.DELIVERED:
            self.outcome.delivered += len(part)
            self.outcome.requests += 1
            return self._next_part(now)
        error = error_of(result)
        if decision is Decision.SPLIT:
            middle = len(part) // 2
            logger.info(
                "tracklane: HTTP %s on a batch of %d; splitting it", result.status, len(part)
            )
            self._parts[:0] = [part[:middle], part[middle:]]
            return self._next_part(now)
        if decision is Decision.RETRY:
            self._retry += 1
            self._last = error
            logger.debug("tracklane: retry %d in %.2fs after %s", self._retry, plan.wait, error)
            return Wait(plan.wait)
        retries = self._retry + 1
        if plan.reason is DropReason.REJECTED:
            drop = Drop(DropReason.REJECTED, error, part)
        elif plan.by_deadline:
            self._last = error
            self._retry = retries
            drop = self._deadline_drop()
        else:
            spent = now - self._started
            exhausted = RetriesExhaustedError(
                f"gave up after {retries} attempts over {spent:.1f}s: {error}"
            )
            exhausted.__cause__ = error
            drop = Drop(DropReason.RETRIES_EXHAUSTED, exhausted, part)
        self.outcome.drops.append(drop)
        return self._next_part(now)

    def waited(self, now: float, aborted: bool = False) -> Action:
        """The wait asked for ended (``aborted``: cut short by shutdown); the next action."""
        if aborted:
            self.outcome.drops.append(self._deadline_drop())
            return self._next_part(now)
        return self._attempt(now)

    def _deadline_drop(self) -> Drop:
        last = self._last
        detail = f" (last error: {last})" if last is not None else ""
        text = f"deadline passed after {self._retry} attempts{detail}"
        reason = self._deadline_reason
        error: DeliveryError = (
            ShutdownError(text) if reason is DropReason.SHUTDOWN else RetriesExhaustedError(text)
        )
        error.__cause__ = last
        return Drop(reason, error, self._part)


def error_of(result: SendResult) -> DeliveryError:
    """The error an unsuccessful answer (or no answer) stands for."""
    if isinstance(result.error, DeliveryError):  # already ours (an OAuthError)
        return result.error
    if result.status is None:
        error = TransportError(f"no response: {type(result.error).__name__}: {result.error}")
        error.__cause__ = result.error
        return error
    return APIError(result.status, result.body, result.retry_after)
