"""Message ids made ahead by the worker: same form, never repeated, never shared with a child."""

from __future__ import annotations

import os
import random
import re
import uuid

import pytest

import tracklane
from helpers import RecordingServer, wait_until
from tracklane import _ids

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_stocked_ids_are_canonical_unique_and_used_before_new_ones() -> None:
    """Ids taken from the stock are version-4 UUIDs, all distinct, and a call falls back to
    making its own once the stock is empty."""
    _ids._stock.clear()
    _ids.stock_message_ids(5_000, chunk=7)
    assert len(_ids._stock) == 5_000
    stocked = set(_ids._stock)
    taken = [_ids.new_message_id() for _ in range(5_000)]
    assert set(taken) == stocked
    assert not _ids._stock
    made = [_ids.new_message_id() for _ in range(1_000)]
    for text in taken[::50] + made[::50]:
        assert uuid.UUID(text).version == 4
        assert str(uuid.UUID(text)) == text
    assert all(CANONICAL_UUID.fullmatch(text) for text in taken + made)
    assert len(set(taken + made)) == 6_000


def test_the_worker_stocks_ids_and_the_calls_take_them(server: RecordingServer) -> None:
    """After delivering a batch the worker thread holds ids for the next calls, which send them."""
    _ids._stock.clear()
    client = tracklane.Client("k", host=server.url, batch_size=10, flush_interval=30)
    try:
        for i in range(10):
            client.track(user_id=f"u{i}", event="First batch")
        assert len(server.wait_for(10, timeout=5.0)) == 10
        # The worker stocks just after settling the batch.
        wait_until(lambda: len(_ids._stock) >= 100, 5.0, "the worker to stock 100 ids")
        stocked = list(_ids._stock)
        assert len(stocked) >= 100
        client.track(user_id="u", event="Second batch")
        assert client.flush(timeout=5.0)
        sent = server.wait_for(11, timeout=5.0)[-1]["messageId"]
        assert sent in stocked  # made by the worker, before the call
        assert sent not in _ids._stock
    finally:
        client.shutdown(timeout=2)


def test_ids_do_not_repeat_when_the_application_reseeds_random() -> None:
    """random.seed() (an application's, or Hypothesis's per example) does not make ids repeat,
    whether they were stocked before the reseed or made after it."""
    _ids._stock.clear()
    random.seed(0)
    _ids.stock_message_ids(100)
    first = [_ids.new_message_id() for _ in range(150)]  # 100 stocked, then 50 made
    random.seed(0)
    _ids.stock_message_ids(100)
    second = [_ids.new_message_id() for _ in range(150)]
    assert len(set(first + second)) == 300


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_never_reuses_its_parents_stocked_ids() -> None:
    """A forked child empties the stock and reseeds the id generator: no id in common."""
    _ids._stock.clear()
    _ids.stock_message_ids(200)
    parents = set(_ids._stock)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            child_ids = [_ids.new_message_id() for _ in range(200)]
            os.write(write_end, ("\n".join(child_ids) + f"\n{len(_ids._stock)}").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    *child_ids, left = b"".join(chunks).decode().split("\n")
    assert len(child_ids) == 200
    assert left == "0"
    assert len(_ids._stock) == 200  # the parent's stock is untouched
    _ids._stock.clear()
    made_after_fork = {_ids.new_message_id() for _ in range(200)}
    assert not (parents | made_after_fork) & set(child_ids)  # the child has its own generator
