"""The rules both pipelines share: the next batch, settling, write-offs, intake limits."""

from __future__ import annotations

from collections import deque
from typing import Deque

import pytest

from tracklane._core.batching import next_batch_wait
from tracklane._core.delivery import Drop
from tracklane._core.intake import FullQueueWarning, queue_full, refuse_closed
from tracklane._core.ledger import Ledger
from tracklane._core.settling import (
    count_outcome,
    drop_unsent,
    flush_result,
    kept_for_next_process,
    redeem_written_off,
    write_off,
)
from tracklane._stats import DropReason
from tracklane.config import OverflowPolicy
from tracklane.exceptions import APIError, QueueFullError, ShutdownError


def identity(ledger: Ledger, queued: int) -> bool:
    snap = ledger.snapshot(queued)
    return snap.tracked == snap.delivered + snap.pending + snap.dropped_total


@pytest.mark.parametrize(
    ("queued", "stopping", "past_deadline", "expected"),
    [
        (0, False, False, None),  # idle: wait for work
        (3, False, False, 0.5),  # a partial batch waits for the interval
        (10, False, False, 0.0),  # a full batch goes now
        (3, True, False, 0.0),  # stopping: whatever is queued goes now
        (0, True, False, None),  # stopping, nothing left: the worker ends
        (3, True, True, None),  # stopping past the deadline: the worker ends
    ],
)
def test_next_batch_wait(queued, stopping, past_deadline, expected):
    """Due now, a wait, or nothing to send, for the thread worker and the task alike."""
    wait = next_batch_wait(queued, 10, False, 0.5, 1.0, stopping, past_deadline)
    assert wait == expected


def test_a_batch_settles_with_its_requests_and_drops():
    """Delivered, acknowledged requests and drops are counted; the identity holds."""
    ledger = Ledger()
    for _ in range(10):
        ledger.accept()
    drop = Drop(DropReason.REJECTED, APIError(400, "bad"), [b"x"])
    count_outcome(ledger, 9, 2, [drop])
    ledger.resolved += 10
    snap = ledger.snapshot(0)
    assert (snap.delivered, snap.batches, snap.dropped) == (9, 2, {"rejected": 1})
    assert identity(ledger, 0)


def test_written_off_batch_delivered_later_moves_back_to_delivered():
    """A batch written off at shutdown and then acknowledged counts as delivered."""
    ledger = Ledger()
    for _ in range(4):
        ledger.accept()
    ledger.inflight = 4
    drop = write_off(ledger, [b"a", b"b", b"c", b"d"])
    assert drop.reason is DropReason.SHUTDOWN
    assert isinstance(drop.error, ShutdownError)
    assert ledger.snapshot(0).dropped == {"shutdown": 4}
    assert identity(ledger, 0)
    redeem_written_off(ledger, 4, 1)
    snap = ledger.snapshot(0)
    assert (snap.delivered, snap.batches, snap.dropped) == (4, 1, {})
    assert identity(ledger, 0)


def test_durable_queue_keeps_what_shutdown_cut_short():
    """Shutdown drops become messages kept for the next process; other drops stay drops."""
    cut = Drop(DropReason.SHUTDOWN, ShutdownError("late"), [b"a", b"b"])
    bad = Drop(DropReason.REJECTED, APIError(400, "bad"), [b"c"])
    assert kept_for_next_process([cut, bad], durable=True) == ([b"a", b"b"], [bad])
    assert kept_for_next_process([cut, bad], durable=False) == ([], [cut, bad])


def test_unsent_messages_are_dropped_unless_a_durable_queue_keeps_them():
    """Shutdown's leftovers are dropped and resolved; an empty drain (durable) drops nothing."""
    ledger = Ledger()
    for _ in range(3):
        ledger.accept()
    assert drop_unsent(ledger, [], 3, "/tmp/q") is None
    assert ledger.resolved == 0
    drop = drop_unsent(ledger, [b"a", b"b", b"c"], 0, None)
    assert drop is not None
    assert drop.messages == [b"a", b"b", b"c"]
    assert ledger.resolved == 3
    assert identity(ledger, 0)


def test_flush_result_says_what_is_pending():
    """Complete once everything up to the target is resolved; otherwise how many are not."""
    ledger = Ledger()
    for _ in range(5):
        ledger.accept()
    ledger.resolved = 2
    result = flush_result(ledger, 5, 3)
    assert not result.complete
    assert result.pending == 3
    ledger.resolved = 5
    assert flush_result(ledger, 5, 0).complete


def test_full_queue_drops_newest_or_oldest_by_policy():
    """drop_newest refuses the message; drop_oldest queues it in place of the oldest."""
    ledger = Ledger()
    queue: Deque[bytes] = deque([b"1", b"2"])
    ledger.accepted = ledger.tracked = 2
    ledger.tracked += 1  # the call that finds the queue full
    drop = queue_full(ledger, queue, b"3", OverflowPolicy.DROP_NEWEST, 2)
    assert drop.messages == [b"3"]
    assert isinstance(drop.error, QueueFullError)
    assert list(queue) == [b"1", b"2"]
    assert identity(ledger, len(queue))
    ledger.tracked += 1
    drop = queue_full(ledger, queue, b"4", OverflowPolicy.DROP_OLDEST, 2)
    assert drop.messages == [b"1"]
    assert list(queue) == [b"2", b"4"]
    assert identity(ledger, len(queue))


def test_drop_oldest_with_the_oldest_on_disk_drops_the_newest():
    """A durable queue that cannot give up its oldest in memory drops the newest instead."""

    class OnDisk:
        def popleft(self) -> bytes:
            raise IndexError("on disk")

    ledger = Ledger()
    ledger.tracked = 1
    drop = queue_full(ledger, OnDisk(), b"new", OverflowPolicy.DROP_OLDEST, 1)
    assert drop.messages == [b"new"]


def test_closed_client_refuses_and_counts():
    """A message for a closed client is a counted shutdown drop."""
    ledger = Ledger()
    ledger.tracked = 1
    drop = refuse_closed(ledger, b"m")
    assert drop.reason is DropReason.SHUTDOWN
    assert ledger.snapshot(0).dropped == {"shutdown": 1}


def test_full_queue_warning_once_a_minute(caplog):
    """The queue-full warning is logged at most once per interval."""
    warning = FullQueueWarning()
    with caplog.at_level("WARNING", logger="tracklane"):
        for now in (0.0, 1.0, 59.0, 60.0, 61.0):
            warning.warn(now, 10, OverflowPolicy.DROP_NEWEST)
        logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2
    assert "queue full (10 messages)" in logged[0]
