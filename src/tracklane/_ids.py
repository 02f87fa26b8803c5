"""Message ids: random version-4 UUID strings, some made ahead by the delivery worker.

Making an id is a fifth of a ``track()`` call's instructions (a 128-bit random number,
its bytes, their hex, five slices joined: ~8,000 instructions and ~200 instruction-cache
misses when the call runs cold between requests; docs/performance.md, the tail). The
worker thread tops up a small stock of ids after each batch it settles, off the caller's
thread, and a call takes one with a ``list.pop`` (atomic under the GIL). With the stock
empty (no worker yet, a burst larger than the stock, an ``AsyncClient`` alone, whose
worker runs on the caller's loop) a call makes its own id as before.

Ids come from a private ``random.Random`` seeded from the OS: an application (or a test
framework such as Hypothesis) that calls ``random.seed()`` must not make ids repeat, which
with a stock made before the reseed it otherwise would. A forked child empties the stock and
reseeds that generator (``os.register_at_fork``), so it never sends an id its parent made.
"""

from __future__ import annotations

import os
import random
import time
from typing import List

__all__ = ["make_message_id", "new_message_id", "stock_message_ids"]

# uuid4 layout: version nibble 4, variant bits 10.
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)

_random = random.Random()  # seeded from os.urandom; not moved by random.seed()
_getrandbits = _random.getrandbits
_stock: List[str] = []
_take = _stock.pop


def _after_fork_in_child() -> None:
    """A forked child: none of the parent's ids, and a generator of its own."""
    _stock.clear()
    _random.seed()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def make_message_id() -> str:
    """A random version-4 UUID string (RFC 4122: version nibble 4, variant bits 10).

    The bits come from this module's own ``random.Random`` (seeded from the OS, reseeded in
    a forked child); ids need to be unique, not secret. Measured per call (2026-11-30,
    2-core machine): ``str(uuid4())`` 3.3 µs; 16 bytes of ``os.urandom`` (a system call) set
    and formatted by hand 1.5 µs; ``"%032x" %`` of the bits 0.94 µs;
    ``int.to_bytes(...).hex()`` as here 0.75 µs.
    """
    h = ((_getrandbits(128) & _UUID_CLEAR) | _UUID_SET).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_message_id() -> str:
    """A fresh message id: one made ahead by the worker if any is left, else made now."""
    if _stock:  # no exception raised and caught when the stock is empty (0.7 µs)
        try:
            return _take()
        except IndexError:  # another thread took the last one meanwhile
            pass
    return make_message_id()


def stock_message_ids(target: int, chunk: int = 25) -> None:
    """Top the stock up to ``target`` ids. Called by the worker thread between batches.

    Made ``chunk`` at a time (~25 µs warm) with the GIL let go between chunks, so that a thread
    whose sleep or I/O ends meanwhile waits for one chunk at most, not for all of them.
    """
    missing = target - len(_stock)
    while missing > 0:
        count = min(chunk, missing)
        _stock.extend([make_message_id() for _ in range(count)])
        missing -= count
        if missing > 0:
            time.sleep(0)
