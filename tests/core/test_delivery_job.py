"""One batch through the decisions: a driver loop with a fake clock, no I/O, no sleeping."""

from __future__ import annotations

import json
from typing import Callable, List, Optional, Tuple

from tracklane._core.delivery import BatchJob, Done, Outcome, Send, Wait
from tracklane._core.retry import RetryPolicy
from tracklane._stats import DropReason
from tracklane.exceptions import (
    APIError,
    RetriesExhaustedError,
    ShutdownError,
    TransportError,
)
from tracklane.transports import SendResult

POLICY = RetryPolicy(max_retries=3, base=1.0, cap=4.0, max_total=60.0)
Answer = Callable[[List[dict]], SendResult]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0


def run(
    messages: List[bytes],
    answer: Answer,
    *,
    deadline: Optional[float] = None,
    reason: DropReason = DropReason.SHUTDOWN,
    abort_after: Optional[int] = None,
    request_cost: float = 0.0,
    timeout: float = 15.0,
) -> Tuple[Outcome, List[object], Clock]:
    """Drive a job: each Send costs request_cost seconds, each Wait advances the clock."""
    clock = Clock()
    trace: List[object] = []
    job = BatchJob(messages, POLICY, timeout, lambda: "T", deadline, reason, rand=lambda: 1.0)
    action = job.start(clock.now)
    waits = 0
    while not isinstance(action, Done):
        trace.append(action)
        if isinstance(action, Send):
            batch = json.loads(action.body)["batch"]
            assert action.count == len(batch)
            clock.now += request_cost
            action = job.answered(answer(batch), clock.now)
        else:
            assert isinstance(action, Wait)
            waits += 1
            aborted = abort_after is not None and waits > abort_after
            if not aborted:
                clock.now += action.seconds
            action = job.waited(clock.now, aborted)
    return action.outcome, trace, clock


def msgs(*ids: int) -> List[bytes]:
    return [json.dumps({"id": i}).encode() for i in ids]


def ok(_: List[dict]) -> SendResult:
    return SendResult(status=200)


def scripted(*results: SendResult) -> Answer:
    queue = list(results)

    def answer(_: List[dict]) -> SendResult:
        return queue.pop(0) if queue else SendResult(status=200)

    return answer


def test_delivered_on_first_attempt():
    """A 200 delivers every message with one request and no wait."""
    outcome, trace, _ = run(msgs(1, 2, 3), ok)
    assert outcome.delivered == 3
    assert not outcome.drops
    assert len(trace) == 1
    assert isinstance(trace[0], Send)
    assert trace[0].timeout == 15.0


def test_retries_with_backoff_then_delivers():
    """503, no answer, then 200: two waits growing exponentially, the same body resent."""
    outcome, trace, clock = run(
        msgs(1, 2),
        scripted(SendResult(status=503), SendResult(error=ConnectionResetError("reset"))),
    )
    assert outcome.delivered == 2
    waits = [a.seconds for a in trace if isinstance(a, Wait)]
    assert waits == [1.0, 2.0]
    bodies = {a.body for a in trace if isinstance(a, Send)}
    assert len(bodies) == 1  # same bytes, same sentAt, same messageIds
    assert clock.now == 1003.0


def test_rejected_is_dropped_with_the_servers_answer():
    """A 401 drops the batch as rejected, the error carrying status and body."""
    outcome, _, _ = run(msgs(1, 2), lambda _: SendResult(status=401, body="bad key"))
    (drop,) = outcome.drops
    assert drop.reason is DropReason.REJECTED
    assert isinstance(drop.error, APIError)
    assert drop.error.status_code == 401
    assert "bad key" in str(drop.error.body)
    assert len(drop.messages) == 2


def test_split_isolates_one_bad_message():
    """A 400 splits the batch down to the bad message; every other message is delivered."""

    def answer(batch: List[dict]) -> SendResult:
        return SendResult(status=400) if any(m["id"] == 5 for m in batch) else ok(batch)

    outcome, trace, _ = run(msgs(*range(8)), answer)
    assert outcome.delivered == 7
    (drop,) = outcome.drops
    assert drop.reason is DropReason.REJECTED
    assert drop.messages == msgs(5)
    sizes = [a.count for a in trace if isinstance(a, Send)]
    assert sizes == [8, 4, 4, 2, 1, 1, 2]


def test_retries_exhausted_after_max_retries():
    """Past max_retries the batch is dropped; the error names the attempts and the cause."""
    outcome, trace, _ = run(msgs(1), lambda _: SendResult(status=500, body="down"))
    (drop,) = outcome.drops
    assert drop.reason is DropReason.RETRIES_EXHAUSTED
    assert isinstance(drop.error, RetriesExhaustedError)
    assert "after 4 attempts" in str(drop.error)
    assert isinstance(drop.error.__cause__, APIError)
    assert sum(isinstance(a, Send) for a in trace) == 4


def test_no_answer_gives_a_transport_error():
    """Without any answer, the drop's cause is a TransportError wrapping the socket error."""
    failure = OSError("refused")
    outcome, _, _ = run(msgs(1), lambda _: SendResult(error=failure))
    cause = outcome.drops[0].error.__cause__
    assert isinstance(cause, TransportError)
    assert cause.__cause__ is failure


def test_deadline_bounds_each_request_and_ends_the_batch():
    """Each request gets only the time left; at the deadline the batch drops for its reason."""
    outcome, trace, _ = run(
        msgs(1, 2),
        lambda _: SendResult(status=503),
        deadline=1002.5,
        reason=DropReason.RETRIES_EXHAUSTED,
    )
    first = trace[0]
    assert isinstance(first, Send)
    assert first.timeout == 2.5
    (drop,) = outcome.drops
    assert drop.reason is DropReason.RETRIES_EXHAUSTED
    assert isinstance(drop.error, RetriesExhaustedError)
    assert "deadline passed" in str(drop.error)


def test_deadline_already_passed_sends_nothing():
    """A job whose deadline has passed drops at once, as shut down, without a request."""
    outcome, trace, _ = run(msgs(1), ok, deadline=999.0)
    assert trace == []
    (drop,) = outcome.drops
    assert drop.reason is DropReason.SHUTDOWN
    assert isinstance(drop.error, ShutdownError)


def test_request_that_eats_the_deadline_drops_the_rest():
    """A split part whose turn comes after the deadline is dropped without a request."""
    outcome, _, _ = run(
        msgs(1, 2), scripted(SendResult(status=413)), deadline=1001.5, request_cost=1.0
    )
    # 1000: both (413, split); 1001: the first half gets the 0.5 s left and is delivered;
    # 1002: the second half's turn is past the deadline.
    assert outcome.delivered == 1
    (drop,) = outcome.drops
    assert drop.reason is DropReason.SHUTDOWN
    assert drop.messages == msgs(2)


def test_aborted_wait_drops_with_the_last_error():
    """Shutdown cutting a retry wait short drops the batch, naming the last error."""
    outcome, _, _ = run(msgs(1), lambda _: SendResult(status=503), abort_after=1)
    (drop,) = outcome.drops
    assert drop.reason is DropReason.SHUTDOWN
    assert "after 2 attempts" in str(drop.error)
    assert isinstance(drop.error.__cause__, APIError)


def test_total_budget_ends_retries():
    """Retry-After beyond the total budget ends the batch as retries exhausted."""
    outcome, _trace, _ = run(
        msgs(1), scripted(SendResult(status=429, retry_after=50.0), SendResult(status=429))
    )
    assert outcome.drops == []
    assert outcome.delivered == 1
    outcome, _, _ = run(msgs(1), lambda _: SendResult(status=429, retry_after=59.0))
    assert outcome.drops[0].reason is DropReason.RETRIES_EXHAUSTED
