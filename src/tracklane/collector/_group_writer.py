"""One writer thread storing checked requests into SQLite, a group commit at a time.

Requests checked on the event loop are queued here; once the thread holds the store's write
locks it takes every request queued by then, inserts their rows in one transaction
(``Storage.insert_gathered``: one ``COMMIT``, one fsync) and then answers them all with one
wake-up of the event loop.
Before it, each request waited in a thread of its own (an executor hop there and back, then
the threads taking turns on the store's lock), so every request cost several thread
switches; here a group costs two. Measured in docs/performance.md.

Durability is unchanged: a request's answer is set only once its rows are committed and
fsynced, and nothing is answered 200 before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tracklane.collector._check import json_error
from tracklane.collector._ingest import Prepared
from tracklane.collector._ingest_route import Answer
from tracklane.collector._json import dumps
from tracklane.collector.storage import Storage, StorageError, StoredMessage
from tracklane.collector.stores import EventStore

__all__ = ["GroupWriter", "answer_body", "answer_for"]

_log = logging.getLogger("tracklane.collector")
_Waiting = Tuple[Prepared, "asyncio.Future[Answer]", asyncio.AbstractEventLoop]
_Settled = Tuple["asyncio.Future[Answer]", Optional[Answer]]


class GroupWriter:
    """A thread inserting queued requests into ``storage``, many per transaction."""

    def __init__(self, storage: Storage) -> None:
        """Start the writer thread."""
        self.storage = storage
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
            taken: List[_Waiting] = []
            answers = self._commit(functools.partial(self._take, taken), taken)
            _answer(taken, answers)
            self.storage.maintain()  # after answering, so no request waits for it

    def _take(self, taken: List[_Waiting]) -> List[Sequence[StoredMessage]]:
        """Move every queued request into ``taken``; return their messages to store.

        Called with the store's write locks held, so what queued meanwhile joins in.
        """
        with self._wake:
            taken.extend(self._queued)
            self._queued = []
        return [prepared.messages for prepared, _, _ in taken]

    def _commit(
        self, gather: Callable[[], List[Sequence[StoredMessage]]], taken: List[_Waiting]
    ) -> List[Optional[Answer]]:
        """Insert the gathered requests' rows in one transaction; one answer per request."""
        try:
            stored = self.storage.insert_gathered(gather)
        except (sqlite3.Error, StorageError) as exc:
            if not taken:  # failed before gathering: these requests get the refusal
                gather()
            return [json_error(503, f"storage unavailable: {exc}")] * len(taken)
        except Exception:  # a bug: the requests fail (500), the thread carries on
            _log.exception("storing a group of ingest requests failed")
            if not taken:
                gather()
            return [None] * len(taken)
        return [answer_body(prepared, count) for (prepared, _, _), count in zip(taken, stored)]


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
