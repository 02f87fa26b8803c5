"""The garbage collector of a process that serves the collector (and only that)."""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "tune_gc_for_serving"]

# Parsing one 100-event body makes about 1,000 dicts and lists alive at once, so with
# Python's default thresholds (a young collection every 700 net allocations, an older one
# every 10 of those) most requests paid for a collection. Objects made at start-up are frozen
# out of collections, and young ones are collected every 50,000 net allocations: reference
# counting frees a request's objects long before; only cycles wait, a few MB at most.
# Measured in docs/performance.md.
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc_for_serving() -> None:
    """Freeze what start-up allocated and raise the collection thresholds (whole process).

    Called by the serving process itself (``tracklane serve``, its ingest workers), never
    by ``serve_in_thread``, which runs inside someone else's process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
