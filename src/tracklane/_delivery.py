"""Send one batch to the end: retries, Retry-After, splitting a rejected batch, deadlines."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Protocol, Tuple

from ._batch import batch_body
from ._retry import RetryPolicy, is_retryable_status, is_split_status
from ._stats import DropReason
from ._transport import SendResult
from .exceptions import (
    APIError,
    DeliveryError,
    RetriesExhaustedError,
    ShutdownError,
    TransportError,
)

__all__ = ["Drop", "Outcome", "Sender", "Transport"]

logger = logging.getLogger("tracklane")


class Transport(Protocol):
    """Posts one request body and reports what happened, without raising."""

    def send(self, body: bytes, timeout: float) -> SendResult: ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover


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


class Sender:
    """Delivers batches through a transport under a retry policy.

    ``abort`` cuts every wait short (shutdown past its deadline); ``deadline`` (monotonic)
    bounds the whole delivery, including each request's timeout.
    """

    def __init__(
        self,
        transport: Transport,
        policy: RetryPolicy,
        request_timeout: float,
        on_retry: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.policy = policy
        self.request_timeout = request_timeout
        self.on_retry = on_retry

    def deliver(
        self,
        messages: List[bytes],
        abort: threading.Event,
        deadline: Optional[float] = None,
        deadline_reason: DropReason = DropReason.SHUTDOWN,
    ) -> Outcome:
        """Deliver ``messages`` (one request, more if the batch has to be split).

        Messages still undelivered when ``deadline`` passes are dropped for ``deadline_reason``.
        """
        outcome = Outcome()
        pending: List[List[bytes]] = [messages]
        while pending:
            part = pending.pop(0)
            result, drop = self._send_with_retries(part, abort, deadline, deadline_reason)
            if drop is None:
                outcome.delivered += len(part)
                outcome.requests += 1
                continue
            status = result.status if result is not None else None
            if status is not None and is_split_status(status) and len(part) > 1:
                middle = len(part) // 2
                logger.info("tracklane: HTTP %s on a batch of %d; splitting it", status, len(part))
                pending[:0] = [part[:middle], part[middle:]]
                continue
            outcome.drops.append(drop)
        return outcome

    def _send_with_retries(
        self,
        messages: List[bytes],
        abort: threading.Event,
        deadline: Optional[float],
        deadline_reason: DropReason,
    ) -> Tuple[Optional[SendResult], Optional[Drop]]:
        body = batch_body(messages)
        started = time.monotonic()
        retry = 0
        while True:
            timeout = self.request_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    return None, _deadline_drop(deadline_reason, messages, retry)
            result = self.transport.send(body, timeout)
            if result.ok:
                return result, None
            error = _error_of(result)
            retryable = result.status is None or is_retryable_status(result.status)
            if not retryable:
                return result, Drop(DropReason.REJECTED, error, messages)
            retry += 1
            wait = self.policy.delay(retry, result.retry_after)
            spent = time.monotonic() - started
            if retry > self.policy.max_retries or spent + wait > self.policy.max_total:
                exhausted = RetriesExhaustedError(
                    f"gave up after {retry} attempts over {spent:.1f}s: {error}"
                )
                exhausted.__cause__ = error
                return result, Drop(DropReason.RETRIES_EXHAUSTED, exhausted, messages)
            if deadline is not None and time.monotonic() + wait >= deadline:
                return result, _deadline_drop(deadline_reason, messages, retry, error)
            logger.debug("tracklane: retry %d in %.2fs after %s", retry, wait, error)
            if abort.wait(wait):
                return result, _deadline_drop(deadline_reason, messages, retry, error)
            self.on_retry()


def _deadline_drop(
    reason: DropReason, messages: List[bytes], attempts: int, last: Optional[DeliveryError] = None
) -> Drop:
    detail = f" (last error: {last})" if last is not None else ""
    text = f"deadline passed after {attempts} attempts{detail}"
    error: DeliveryError = (
        ShutdownError(text) if reason is DropReason.SHUTDOWN else RetriesExhaustedError(text)
    )
    error.__cause__ = last
    return Drop(reason, error, messages)


def _error_of(result: SendResult) -> DeliveryError:
    if result.status is None:
        error = TransportError(f"no response: {type(result.error).__name__}: {result.error}")
        error.__cause__ = result.error
        return error
    return APIError(result.status, result.body, result.retry_after)
