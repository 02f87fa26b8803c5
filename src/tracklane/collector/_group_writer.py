"""One writer thread storing checked requests into SQLite, a group commit at a time.

Requests checked on the event loop are queued here; the thread takes every request queued
since its last commit, inserts their rows in one transaction (``Storage.insert_groups``:
one ``COMMIT``, one fsync) and then answers them all with one wake-up of the event loop.
Before it, each request waited in a thread of its own (an executor hop there and back, then
the threads taking turns on the store's lock), so every request cost several thread
switches; here a group costs two. Measured in docs/performance.md.

Durability is unchanged: a request's answer is set only once its rows are committed and
fsynced, and nothing is answered 200 before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from typing import Dict, List, Optional, Tuple

from tracklane.collector._check import json_error
from tracklane.collector._ingest import Prepared
from tracklane.collector._ingest_route import Answer
from tracklane.collector._json import dumps
from tracklane.collector.storage import Storage, StorageError
from tracklane.collector.stores import EventStore

__all__ = ["GroupWriter", "answer_body", "answer_for"]

_log = logging.getLogger("tracklane.collector")
_Waiting = Tuple[Prepared, "asyncio.Future[Answer]", asyncio.AbstractEventLoop]
_Settled = Tuple["asyncio.Future[Answer]", Optional[Answer]]


class GroupWriter:
    """A thread inserting queued requests into ``storage``, many per transaction."""

    def __init__(self, storage: Storage) -> None:
        """Start the writer thread."""
        self._storage = storage
        self._wake = threading.Condition(threading.Lock())
        self._queued: List[_Waiting] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tracklane-writer", daemon=True)
        self._thread.start()

    async def store(self, prepared: Prepared) -> Answer:
        """Store what a request brought; return its answer once durable (or the refusal)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        with self._wake:
            if self._closed:
                return json_error(503, "storage unavailable: the collector is stopping")
            self._queued.append((prepared, future, loop))
            self._wake.notify()
        return await future

    def close(self) -> None:
        """Store what is queued, then stop the thread; idempotent."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queued and not self._closed:
                    self._wake.wait()
                if not self._queued:
                    return  # closed, and everything queued was answered
                group, self._queued = self._queued, []
            _answer(group, self._commit(group))

    def _commit(self, group: List[_Waiting]) -> List[Optional[Answer]]:
        """Insert the group's rows in one transaction; one answer per request."""
        try:
            stored = self._storage.insert_groups([prepared.messages for prepared, _, _ in group])
        except (sqlite3.Error, StorageError) as exc:
            refusal = json_error(503, f"storage unavailable: {exc}")
            return [refusal] * len(group)
        except Exception:  # a bug: the requests fail (500), the thread carries on
            _log.exception("storing a group of ingest requests failed")
            return [None] * len(group)
        return [answer_body(prepared, count) for (prepared, _, _), count in zip(group, stored)]


def _answer(group: List[_Waiting], answers: List[Optional[Answer]]) -> None:
    """Hand each answer to its request's event loop: one wake-up per loop."""
    by_loop: Dict[asyncio.AbstractEventLoop, List[_Settled]] = {}
    for (_, future, loop), answer in zip(group, answers):
        by_loop.setdefault(loop, []).append((future, answer))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: List[_Settled]) -> None:
    for future, answer in settled:
        if future.done():  # the request was cancelled (client gone, server stopping)
            continue
        if answer is None:
            future.set_exception(RuntimeError("storing the request failed (see the log)"))
        else:
            future.set_result(answer)


def answer_for(store: EventStore, prepared: Prepared) -> Answer:
    """Store what a request brought (blocking: returns once durable); the answer to send."""
    try:
        stored = store.insert(prepared.messages)
    except (sqlite3.Error, StorageError) as exc:
        return json_error(503, f"storage unavailable: {exc}")
    return answer_body(prepared, stored)


def answer_body(prepared: Prepared, stored: int) -> Answer:
    """The answer to a request whose messages were stored (``stored`` of them new)."""
    body = {
        "success": True,
        "stored": stored,
        "duplicates": len(prepared.messages) - stored,
        "rejected": [rejection.to_json() for rejection in prepared.rejected],
    }
    if prepared.rejected and not prepared.messages:
        body["success"] = False
        body["error"] = f"all {len(prepared.rejected)} messages were rejected"
        return Answer(400, dumps(body))
    return Answer(200, dumps(body))
