"""The ledger keeps tracked == delivered + pending + dropped through every transition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tracklane._core.ledger import Ledger
from tracklane._stats import DropReason


def test_counts_and_identity_through_a_lifecycle():
    """Accepted, refused, stubbed, inline, delivered and dropped messages all add up."""
    ledger = Ledger(recovered=2)
    queued = 2
    for _ in range(5):
        ledger.accept()
        queued += 1
    ledger.refuse(DropReason.TOO_LARGE)
    ledger.stubbed()
    ledger.begin_inline()
    snap = ledger.snapshot(queued)
    assert (snap.tracked, snap.pending, snap.recovered) == (10, 8, 2)
    assert snap.tracked == snap.delivered + snap.pending + snap.dropped_total
    # a batch of 4 goes in flight; 3 delivered, 1 rejected
    queued -= 4
    ledger.inflight = 4
    assert ledger.snapshot(queued).pending == 8
    ledger.inflight = 0
    ledger.delivered += 3
    ledger.drop(DropReason.REJECTED, 1)
    ledger.resolved += 4
    ledger.end_inline()
    ledger.delivered += 1
    snap = ledger.snapshot(queued)
    assert snap.dropped == {"too_large": 1, "rejected": 1}
    assert snap.tracked == snap.delivered + snap.pending + snap.dropped_total


def test_undrop_moves_a_written_off_batch_back():
    """A batch written off at shutdown that was delivered after all leaves the drop counts."""
    ledger = Ledger()
    ledger.drop(DropReason.SHUTDOWN, 5)
    ledger.undrop(DropReason.SHUTDOWN, 2)
    assert ledger.dropped == {"shutdown": 3}
    ledger.undrop(DropReason.SHUTDOWN, 3)
    assert ledger.dropped == {}


def test_snapshot_is_a_copy():
    """A snapshot does not change when the ledger does."""
    ledger = Ledger()
    ledger.refuse(DropReason.QUEUE_FULL)
    snap = ledger.snapshot(0)
    ledger.refuse(DropReason.QUEUE_FULL)
    assert snap.dropped == {"queue_full": 1}


@given(st.lists(st.sampled_from(["accept", "deliver", "drop", "refuse", "stub"]), max_size=60))
def test_identity_holds_for_any_sequence(steps):
    """Whatever happens, in any order, the identity holds in every snapshot."""
    ledger = Ledger()
    queued = 0
    for step in steps:
        if step == "accept":
            ledger.accept()
            queued += 1
        elif step == "refuse":
            ledger.refuse(DropReason.QUEUE_FULL)
        elif step == "stub":
            ledger.stubbed()
        elif queued:
            queued -= 1
            if step == "deliver":
                ledger.delivered += 1
            else:
                ledger.drop(DropReason.RETRIES_EXHAUSTED, 1)
            ledger.resolved += 1
        snap = ledger.snapshot(queued)
        assert snap.tracked == snap.delivered + snap.pending + snap.dropped_total
