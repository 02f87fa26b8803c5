"""The blocking driver of ``_core.delivery``: send one batch to the end in this thread."""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Optional

from ._core.delivery import BatchJob, Done, Drop, Outcome, Send
from ._core.retry import RetryPolicy
from ._stats import DropReason
from .messages import now_timestamp
from .transports import Transport

__all__ = ["Drop", "Outcome", "Sender", "Transport"]


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
        clock = time.monotonic
        job = BatchJob(
            messages, self.policy, self.request_timeout, now_timestamp, deadline, deadline_reason
        )
        action = job.start(clock())
        send = self.transport.send
        while not isinstance(action, Done):
            if isinstance(action, Send):
                action = job.answered(send(action.body, action.timeout), clock())
                continue
            aborted = abort.wait(action.seconds)
            if not aborted:
                self.on_retry()
            action = job.waited(clock(), aborted)
        return action.outcome
